#!/usr/bin/env bash
# Installs the project and its development tools into .venv (a no-op when up to date).
# Service downloads (Kafka, the schema registry) happen on first start and are cached.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: expected Python 3.11 or newer as '$PYTHON'; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
for tool in java mvn; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: '$tool' is needed to fetch and run the local Kafka and registry;" \
             "install a JDK 17+ and Maven (e.g. apt-get install openjdk-17-jdk-headless maven)" >&2
        exit 2
    fi
done

if [ ! -x .venv/bin/python ]; then
    echo "creating .venv ..."
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.servemeta-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing servemeta with its dev extra into .venv (cached by pip) ..."
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet --progress-bar off -e '.[dev]'
    touch "$stamp"
fi
