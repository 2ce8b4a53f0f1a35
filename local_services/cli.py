"""`python -m local_services {kafka,registry,atlas} {start,stop,address,status}`.

`start` prints progress on stderr and the address as the last line on stdout, so
`BOOTSTRAP=$(python -m local_services kafka start)` works; `address` prints only the address.
Exit codes: 0 success, 1 not running (address/status) or failure (message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from local_services.atlas import AtlasService
from local_services.kafka import KafkaService
from local_services.process import ManagedService, ServiceError
from local_services.registry import RegistryService


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local_services",
        description="Start, stop and locate the local Kafka broker, schema registry and Atlas.",
    )
    parser.add_argument("service", choices=("kafka", "registry", "atlas"))
    parser.add_argument("action", choices=("start", "stop", "address", "status"))
    parser.add_argument(
        "--state-dir",
        help="pid file, logs and data of this instance "
        "(default: $SERVEMETA_STATE_DIR, else <repo>/.run/<service>)",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds to wait for readiness on start (default: 90/120/600)"
    )
    return parser


def _service(name: str, state_dir: str | None, timeout: float | None) -> ManagedService:
    service: ManagedService
    if name == "kafka":
        service = KafkaService(state_dir)
    elif name == "registry":
        service = RegistryService(state_dir)
    else:
        # Consumes ATLAS_HOOK on $KAFKA_BOOTSTRAP_SERVERS, else on the local Kafka of the
        # default state dir, which it starts when that is not running.
        service = AtlasService(state_dir)
    if timeout:
        service.start_timeout = timeout
    return service


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    service = _service(args.service, args.state_dir, args.timeout)
    try:
        if args.action == "start":
            result = service.start()
            if result.already_running:
                print(f"{service.title} already running (pid {result.pid})", file=sys.stderr)
            else:
                took = result.install_seconds + result.startup_seconds
                print(
                    f"{service.title} ready in {took:.1f}s (pid {result.pid}, "
                    f"{'cached' if result.used_cache else 'fetched'} binaries, "
                    f"logs in {service.log_dir})",
                    file=sys.stderr,
                )
            print(result.address)
            return 0
        if args.action == "stop":
            stopped = service.stop()
            print(f"{service.title} {'stopped' if stopped else 'was not running'}", file=sys.stderr)
            return 0
        if args.action == "address":
            address = service.address()
            if address is None:
                print(
                    f"{service.title} is not running (state dir {service.state_dir})",
                    file=sys.stderr,
                )
                return 1
            print(address)
            return 0
        status = service.status()
        print(status.describe())
        return 0 if status.state == "running" else 1
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
