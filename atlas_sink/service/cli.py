"""``atlas-sink`` (also ``python -m atlas_sink``): run the sink, replay, register types, show a
model's lineage, inspect and re-drive the dead-letter topic.

Exit codes: 0 done; 1 unexpected error; 2 bad usage or configuration; 3 the target refused
the credentials; 4 Kafka refused the sink (authentication, authorisation, missing topic);
5 the target is unavailable (one-shot commands); 6 shutdown took longer than
SINK_SHUTDOWN_TIMEOUT_SECONDS and the batch in hand was abandoned; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from atlas_sink import __version__
from atlas_sink.atlas.typedefs import TypedefConflict
from atlas_sink.core.target import TargetAuthError, TargetUnavailable
from atlas_sink.kafka.dlq import DlqUnavailable
from atlas_sink.runtime.config import ConfigError, SinkConfig, load_config
from atlas_sink.runtime.exit_codes import (
    EXIT_FAILURE,
    EXIT_FORCED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TARGET_AUTH,
    EXIT_TARGET_UNAVAILABLE,
    EXIT_USAGE,
)
from atlas_sink.service.progress import ProgressBar
from atlas_sink.service.wiring import (
    ReaderUnavailable,
    build_pipeline,
    build_reader,
    build_target,
    pipeline_factory,
)

if TYPE_CHECKING:  # imported when used, so that --help stays quick
    pass

log = logging.getLogger("servemeta.sink.cli")


class _Usage(Exception):
    """A request this command cannot serve as given; the message says what to change."""


class _Stopper:
    """SIGTERM/SIGINT set ``event``; if the command has not finished ``grace`` seconds later,
    the process exits with EXIT_FORCED (nothing uncommitted is lost: it is read again)."""

    def __init__(self, grace: float) -> None:
        self.event = threading.Event()
        self.grace = grace
        self._timer: threading.Timer | None = None
        self._previous: dict[int, Any] = {}
        self.signal: int | None = None

    def install(self) -> _Stopper:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            return
        self.signal = signum
        log.info(
            "stop requested",
            extra={"signal": signal.Signals(signum).name, "grace_seconds": self.grace},
        )
        self.event.set()
        self._timer = threading.Timer(self.grace, self._force)
        self._timer.daemon = True
        self._timer.start()

    def _force(self) -> None:
        log.error(
            "shutdown did not finish in time; abandoning the batch in hand (uncommitted: "
            "it is read again on the next start)",
            extra={"grace_seconds": self.grace},
        )
        logging.shutdown()
        os._exit(EXIT_FORCED)

    def cancel(self) -> None:
        """Disarm the watchdog and give the signals back (main() may be called in-process)."""
        if self._timer is not None:
            self._timer.cancel()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


# -- commands ----------------------------------------------------------------------------------


def cmd_run(config: SinkConfig, _args: argparse.Namespace) -> int:
    from atlas_sink.core.pipeline import tune_gc_for_streaming
    from atlas_sink.kafka.consumer import SinkConsumer
    from atlas_sink.runtime.metrics import Health, MetricsServer, SinkMetrics
    from atlas_sink.runtime.retry import retry_unavailable

    config.require_kafka()
    tune_gc_for_streaming()
    metrics, health = SinkMetrics(max_versions=config.metrics_max_versions), Health()
    try:
        server = MetricsServer(metrics, health, config.metrics_host, config.metrics_port).start()
    except OSError as exc:
        raise _Usage(
            f"cannot serve metrics on {config.metrics_host}:{config.metrics_port} ({exc.strerror}):"
            " choose another SINK_METRICS_PORT (0 picks a free one)"
        ) from None
    stopper = _Stopper(config.shutdown_timeout_seconds).install()
    try:
        target = build_target(config)
    except BaseException:
        server.stop()
        stopper.cancel()
        raise
    try:
        if config.ensure_types:

            def ensure() -> bool:
                target.ensure_types()
                return True

            done = retry_unavailable(
                ensure,
                "registering type definitions",
                stopper.event,
                config.retry_max_seconds,
                health,
            )
            if done is None:
                return EXIT_OK
        sink = SinkConsumer(
            config,
            pipeline_factory(config, target),
            metrics=metrics,
            health=health,
            stop=stopper.event,
        )
        totals = sink.run()
        log.info("stopped", extra={"totals": totals.__dict__})
        return EXIT_OK
    finally:
        target.close()
        server.stop()
        stopper.cancel()


def cmd_replay(config: SinkConfig, args: argparse.Namespace) -> int:
    from atlas_sink.core.pipeline import tune_gc_for_streaming
    from atlas_sink.kafka.replay import replay

    config.require_kafka()
    tune_gc_for_streaming()
    stopper = _Stopper(config.shutdown_timeout_seconds).install()
    since = None if args.from_beginning else args.from_time
    target = build_target(config)
    bar = ProgressBar(sys.stderr) if args.progress else None
    try:
        if config.ensure_types:
            target.ensure_types()
        result = replay(
            config,
            build_pipeline(config, target),
            since=since,
            stop=stopper.event,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
        target.close()
        stopper.cancel()
    counts = result.as_dict()
    counts["target"] = config.target
    if config.target == "local":
        counts["catalog"] = str(config.catalog_path)
    if args.json:
        print(json.dumps(counts, indent=2, sort_keys=True))
    else:
        dead = ", ".join(f"{k}: {v}" for k, v in sorted(result.dead_lettered.items())) or "none"
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(result.dropped.items())) or "none"
        print(
            f"replayed {result.consumed} messages in {result.seconds:.1f} s into {config.target}"
            f": {result.decoded} decoded, {result.duplicates} duplicates, {result.updates} "
            f"updates, {result.entities_written} entities written; dead letters: {dead}; "
            f"dropped by reason: {dropped}"
        )
    return EXIT_OK if result.complete else EXIT_INTERRUPTED


def cmd_init_types(config: SinkConfig, _args: argparse.Namespace) -> int:
    target = build_target(config)
    try:
        target.ensure_types()
    finally:
        target.close()
    # Atlas's own types are checked over REST only: not for the embedded catalog, nor for a
    # hook target without ATLAS_URL.
    checked = config.target != "local" and bool(config.atlas_url)
    print(
        f"type definitions registered in {config.target}"
        + (" (Atlas's own types the sink writes are there)" if checked else "")
    )
    return EXIT_OK


def cmd_lineage(config: SinkConfig, args: argparse.Namespace) -> int:
    from atlas_sink.catalog.lineage_text import render_lineage
    from atlas_sink.catalog.reader import ModelNotFound, find_model, find_version, model_lineage

    reader, close = build_reader(config)
    try:
        model_entity = find_model(reader, args.model, args.cluster)
        version = find_version(reader, model_entity, args.version)
        graph = model_lineage(reader, version, args.depth).to_atlas()
    except ModelNotFound as exc:
        raise _Usage(str(exc)) from None
    finally:
        close()
    if args.json:
        print(json.dumps(graph, indent=2, sort_keys=True))
    else:
        print(render_lineage(graph))
    return EXIT_OK


def cmd_report(config: SinkConfig, args: argparse.Namespace) -> int:
    from atlas_sink.catalog.lineage_picture import render_html
    from atlas_sink.catalog.reader import ModelNotFound
    from atlas_sink.catalog.report import build_report, live_notes, render_text

    reader, close = build_reader(config)
    try:
        report = build_report(reader, args.model, args.cluster, args.version, config.stale_windows)
    except ModelNotFound as exc:
        raise _Usage(str(exc)) from None
    finally:
        close()
    if args.picture:
        title = f"Lineage of {args.model} {report.data['version']['version']}"
        picture = render_html(report.lineage, title, live_notes(report))
        Path(args.picture).write_text(picture, encoding="utf-8")
        report.data["picture"] = str(Path(args.picture).resolve())
    if args.json:
        print(json.dumps(report.data, indent=2, sort_keys=True, default=str))
    else:
        print(render_text(report))
        if args.picture:
            print(f"\nlineage picture: {report.data['picture']}")
    return EXIT_OK


def cmd_dlq_list(config: SinkConfig, args: argparse.Namespace) -> int:
    from atlas_sink.kafka.dlq import read_dlq

    config.require_kafka()
    stopper = _Stopper(config.shutdown_timeout_seconds).install()
    counts: dict[str, int] = {}
    shown = 0
    try:
        for record in read_dlq(config, args.reason, stopper.event):
            counts[record.reason] = counts.get(record.reason, 0) + 1
            if args.limit is not None and shown >= args.limit:
                continue
            shown += 1
            if args.json:
                print(json.dumps(record.as_dict(), sort_keys=True))
            else:
                origin = (
                    f"{record.original_topic}[{record.original_partition}]@{record.original_offset}"
                )
                print(
                    f"{record.partition}:{record.offset}  {record.reason:<18} {origin}  "
                    f"{record.size} B  {record.error[:160]}"
                )
    finally:
        stopper.cancel()
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "empty"
    print(f"{sum(counts.values())} dead letters in {config.dlq_topic} ({summary})", file=sys.stderr)
    return EXIT_INTERRUPTED if stopper.event.is_set() else EXIT_OK


def cmd_dlq_redrive(config: SinkConfig, args: argparse.Namespace) -> int:
    from atlas_sink.kafka.dlq import redrive

    config.require_kafka()
    stopper = _Stopper(config.shutdown_timeout_seconds).install()
    try:
        result = redrive(config, args.reason, dry_run=args.dry_run, stop=stopper.event)
    finally:
        stopper.cancel()
    if args.json:
        print(json.dumps({**result.as_dict(), "dry_run": args.dry_run}, sort_keys=True))
    else:
        verb = "would re-drive" if args.dry_run else "re-drove"
        topics = ", ".join(f"{t}: {n}" for t, n in sorted(result.by_topic.items())) or "none"
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(result.skipped.items())) or "none"
        print(
            f"examined {result.examined}; {verb} {result.redriven} ({topics}); "
            f"skipped {sum(result.skipped.values())} ({skipped})"
        )
    return EXIT_INTERRUPTED if stopper.event.is_set() else EXIT_OK


def cmd_config(config: SinkConfig, _args: argparse.Namespace) -> int:
    print(config.describe())
    return EXIT_OK


# -- argument parsing --------------------------------------------------------------------------


def _iso_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2026-11-28T12:00:00Z, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model name")
    parser.add_argument("--version", help="model version (default: the model's latest)")
    parser.add_argument("--cluster", help="cluster (default: the only one serving MODEL)")


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        choices=("local", "atlas-rest", "atlas-hook"),
        help="where entities go (default: SINK_TARGET, else local, or atlas-rest with ATLAS_URL)",
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        metavar="PATH",
        help="local catalog file (default: SINK_CATALOG_PATH)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atlas-sink",
        description="Model-serving lifecycle events from Kafka into Apache Atlas or the local "
        "catalog. Settings come from --config FILE / SINK_CONFIG_FILE, then the environment.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="(default: INFO)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="consume, write, commit until SIGTERM",
        description="The long-lived sink: consume batches, write them to the target, store "
        "dead letters, commit. Serves /metrics, /healthz and /readyz on SINK_METRICS_HOST:"
        "SINK_METRICS_PORT. SIGTERM or SIGINT stop it within SINK_SHUTDOWN_TIMEOUT_SECONDS.",
    )
    run.set_defaults(handler=cmd_run)

    replay = commands.add_parser(
        "replay",
        help="rebuild a target from the topics, up to their current end",
        description="Read the topics with a fresh consumer group, from the beginning or from a "
        "time, up to the end offsets they have now, and write everything into the target. "
        "Nothing is committed and nothing is dead-lettered again.",
    )
    start = replay.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-beginning", action="store_true", help="from the oldest message")
    start.add_argument(
        "--from-time", type=_iso_time, metavar="ISO", help="from the first message at or after"
    )
    _add_target_options(replay)
    replay.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )
    replay.add_argument("--json", action="store_true", help="counts as JSON on stdout")
    replay.set_defaults(handler=cmd_replay)

    init = commands.add_parser(
        "init-types",
        help="register the type definitions in the target (idempotent)",
        description="Create the project's types in the target, and add attributes that newer "
        "definitions gained. `run` does this at start unless SINK_ENSURE_TYPES=false.",
    )
    _add_target_options(init)
    init.set_defaults(handler=cmd_init_types)

    lineage = commands.add_parser(
        "lineage",
        help="a model version's upstream and downstream lineage",
        description="Print where a model version came from (training data, training run) and "
        "what uses it (deployments, their input and output topics).",
    )
    _add_model_arguments(lineage)
    lineage.add_argument("--depth", type=int, default=3, help="process hops each way (0: all)")
    lineage.add_argument("--json", action="store_true", help="Atlas's lineage JSON shape")
    _add_target_options(lineage)
    lineage.set_defaults(handler=cmd_lineage)

    report = commands.add_parser(
        "report",
        help="the governance report of a served model",
        description="Answer, from the catalog, what the project exists to prove about a "
        "served model: training sources and parameters, artifact storage and its security, "
        "model type, quality trained and live, input/output schemas and their history, "
        "taxonomy and classifications, schemas of the sources, and the processes that use "
        "it with the data flowing through them.",
    )
    _add_model_arguments(report)
    report.add_argument("--json", action="store_true", help="JSON for programs")
    report.add_argument(
        "--picture", metavar="FILE.html", help="also write the lineage as a self-contained page"
    )
    _add_target_options(report)
    report.set_defaults(handler=cmd_report)

    dlq = commands.add_parser("dlq", help="list or re-drive dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = dlq_commands.add_parser(
        "list", help="reason, error, original position and size of each dead letter"
    )
    listing.add_argument("--reason", help="only this reason (e.g. framing, avro, validation)")
    listing.add_argument("--limit", type=int, help="print at most this many (all are counted)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=cmd_dlq_list)
    again = dlq_commands.add_parser(
        "redrive",
        help="send dead letters back to their original topic",
        description="Produce each dead letter's original value and key back to its original "
        "topic, once the cause is fixed. Events already applied are dropped as duplicates.",
    )
    again.add_argument("--reason", help="only this reason")
    again.add_argument("--dry-run", action="store_true", help="count, do not produce")
    again.add_argument("--json", action="store_true", help="counts as JSON")
    again.set_defaults(handler=cmd_dlq_redrive)

    show = commands.add_parser(
        "config", help="validate the settings and print them (secrets masked)"
    )
    show.set_defaults(handler=cmd_config)
    # `report` will join here.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from atlas_sink.kafka.client import SinkFatal
    from atlas_sink.runtime import logs

    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        "target": getattr(args, "target", None),
        "catalog_path": getattr(args, "catalog", None),
        "log_level": args.log_level,
    }
    try:
        config = load_config(file=args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"atlas-sink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(config.log_level, secrets=config.secrets())
    handler: Callable[[SinkConfig, argparse.Namespace], int] = args.handler
    try:
        return handler(config, args)
    except ConfigError as exc:
        print(f"atlas-sink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (_Usage, ReaderUnavailable) as exc:
        print(f"atlas-sink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SinkFatal as exc:
        log.error("stopping: %s", exc, extra={"exit_code": exc.exit_code})
        return exc.exit_code
    except TargetAuthError as exc:
        log.error(
            "the target refused the credentials: %s; fix ATLAS_USERNAME / ATLAS_PASSWORD", exc
        )
        return EXIT_TARGET_AUTH
    except TargetUnavailable as exc:
        log.error("the target is unavailable: %s; try again when it is up", exc)
        return EXIT_TARGET_UNAVAILABLE
    except DlqUnavailable as exc:
        log.error("the dead-letter topic cannot be read or written: %s", exc)
        return EXIT_TARGET_UNAVAILABLE
    except TypedefConflict as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:
        log.exception("unexpected error")
        return EXIT_FAILURE
