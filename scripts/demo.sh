#!/usr/bin/env bash
# The Quickstart's first command: install into .venv, then run the whole pipeline on 127.0.0.1
# for a short while and print the model's governance report (python -m demo.run; flags are
# passed on, see `bash scripts/demo.sh --help`):
#
#   bash scripts/demo.sh                  # local Kafka, the sink into .run/demo/catalog.sqlite
#   bash scripts/demo.sh --duration 60    # longer traffic
#   bash scripts/demo.sh --atlas          # the project's own Apache Atlas as the target
#   ATLAS_URL=http://host:21000 ATLAS_USERNAME=u ATLAS_PASSWORD=p bash scripts/demo.sh
#
# Nothing is left running: the driver stops what it started, and this script stops the
# demo's local services itself should the driver be killed before it could.
set -euo pipefail
cd "$(dirname "$0")/.."

began=$(date +%s)
echo "demo: installing servemeta into .venv (scripts/bootstrap.sh; quick when up to date) ..."
bash scripts/bootstrap.sh
echo "demo: .venv ready ($(($(date +%s) - began)) s)"

python=.venv/bin/python
state=.run/demo
driver_pid=

stop_leftovers() {
    # Only finds work when the driver died without cleaning up (SIGKILL, OOM): the server, the
    # sink and the services run in their own sessions and would outlive it.
    local component pid service
    for component in server sink; do
        pid=$(cat "$state/$component.pid" 2>/dev/null || true)
        # The pid file may be stale: signal only a process that is still the demo's.
        if [ -n "$pid" ] && ps -o args= -p "$pid" 2>/dev/null | grep -q -e demo.server -e demo.flink_job -e atlas_sink; then
            kill -TERM -- "-$pid" 2>/dev/null || true
            for _ in $(seq 1 30); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.5
            done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        rm -f "$state/$component.pid"
    done
    for service in atlas registry kafka; do
        if [ -f "$state/$service/$service.pid" ] && [ -z "${DEMO_KEEP_SERVICES:-}" ]; then
            "$python" -m local_services "$service" stop --state-dir "$state/$service" \
                >/dev/null 2>&1 || true
        fi
    done
}

forward() {
    # The driver stops its components in order on SIGTERM; it also gets Ctrl-C by itself.
    if [ -n "$driver_pid" ]; then
        kill -TERM "$driver_pid" 2>/dev/null || true
    fi
}

trap forward INT TERM HUP
trap stop_leftovers EXIT

for arg in "$@"; do
    # --keep-services asks for the services to outlive the demo: the EXIT trap must agree.
    if [ "$arg" = "--keep-services" ]; then
        export DEMO_KEEP_SERVICES=1
    fi
done

# In the background and waited for, so that a signal to this script runs the trap at once
# (bash defers traps while a foreground child runs).
"$python" -m demo.run "$@" &
driver_pid=$!
status=0
while :; do
    wait "$driver_pid" && status=0 || status=$?
    # wait also returns when a trapped signal arrives; go on waiting while the driver cleans up.
    if ! kill -0 "$driver_pid" 2>/dev/null; then
        break
    fi
done
driver_pid=
exit "$status"
