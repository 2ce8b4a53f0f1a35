#!/usr/bin/env bash
# The test command: lint, type-check, then every test that is not marked slow, the
# integration tests included (they start the project's own Kafka and schema registry unless
# KAFKA_BOOTSTRAP_SERVERS / SCHEMA_REGISTRY_URL name running ones).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== import-linter (the sink's layers)"
lint-imports
echo "== pytest"
set +e
python -m pytest -m "not slow" "$@"
status=$?
set -e
# Exit code 5 means no test ran: that is a failure of the suite, not a pass.
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
