"""The whole pipeline end to end with one command (``scripts/demo.sh`` runs this after
installing): local Kafka (and registry, and Atlas when asked), the sink, the demo model server
and its traffic for a short while, then the governance report of the model.

Everything listens on 127.0.0.1. Every process this starts is stopped before it returns, also
on failure or Ctrl-C; a failing step ends the run with its component's log tail.

    python -m demo.run                     # embedded catalog in .run/demo/catalog.sqlite
    python -m demo.run --duration 60 --rate 50
    python -m demo.run --atlas             # the project's own Apache Atlas (minutes to start)
    ATLAS_URL=http://atlas:21000 ATLAS_USERNAME=... ATLAS_PASSWORD=... python -m demo.run

Exit codes: 0 done; 1 a step failed (the message names it and shows its log); 2 bad usage;
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, TypeVar

from capture.config import DEFAULT_TOPIC, KafkaSecurity
from local_services import harness

if TYPE_CHECKING:  # imported when a service is started: --help stays quick
    from local_services.process import ManagedService

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = REPO / ".run" / "demo"
MODEL_NAME = "wine-classifier"
# demo.flink_job's default: two replicas of one deployment.
FLINK_PARALLELISM = 2
LOG_TAIL_LINES = 30
# The user's connection settings, forwarded to every child; ATLAS_URL and SINK_* are not.
_FORWARDED = ("KAFKA_", "SCHEMA_REGISTRY_", "ATLAS_USER", "ATLAS_PASSWORD")
T = TypeVar("T")


class StepFailed(Exception):
    """A step of the demo failed; ``log`` is the failing component's log, if it has one."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP: stop everything and exit 130 (BaseException, so no
    ``except Exception`` on the way swallows it)."""


@dataclass(frozen=True)
class DemoOptions:
    duration: float = 40.0
    rate: float = 20.0
    error_rate: float = 0.02
    # None: halfway through the traffic.
    swap_after_seconds: float | None = None
    window_seconds: float = 5.0
    work_dir: Path = DEFAULT_WORK_DIR
    model_name: str = MODEL_NAME
    cluster: str = "demo"
    input_topic: str = "wine-requests"
    output_topic: str = "wine-scores"
    control_topic: str = "wine-models"
    events_topic: str = DEFAULT_TOPIC
    dlq_topic: str = f"{DEFAULT_TOPIC}.dlq"
    server_group: str = "wine-scorer"
    # python: demo.server, one process; flink: demo.flink_job, PyFlink at parallelism 2.
    engine: str = "python"
    # A group per run: the fresh catalog gets every event the topic holds.
    sink_group: str = field(default_factory=lambda: f"servemeta-demo-sink-{uuid.uuid4().hex[:8]}")
    atlas: bool = False
    registry: bool = False
    keep_services: bool = False
    # Deadlines of the waits, in seconds.
    start_timeout: float = 90.0
    drain_timeout: float = 60.0

    @property
    def swap_after(self) -> float:
        return self.swap_after_seconds if self.swap_after_seconds is not None else self.duration / 2

    @property
    def catalog_path(self) -> Path:
        return self.work_dir / "catalog.sqlite"

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """One line per step on stdout, stamped with the time since the demo began."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.began = time.monotonic()
        self.timings: list[tuple[str, float]] = []

    def line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", file=self.out, flush=True)

    @contextlib.contextmanager
    def step(self, name: str, doing: str | None = None) -> Iterator[None]:
        """Announce a long step (``doing``), and time it under ``name``."""
        if doing:
            self.line(f"{doing} ...")
        began = time.monotonic()
        try:
            yield
        finally:
            self.timings.append((name, time.monotonic() - began))

    def table(self) -> str:
        width = max((len(n) for n, _ in self.timings), default=0)
        rows = [f"  {n:<{width}}  {s:6.1f} s" for n, s in self.timings]
        rows.append(f"  {'total':<{width}}  {time.monotonic() - self.began:6.1f} s")
        return "\n".join(rows)


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} cannot be read: {exc.strerror})"
    last = text.splitlines()[-lines:]
    if not last:
        return f"(log {path} is empty)"
    return f"last {len(last)} lines of {path}:\n" + "\n".join(f"  | {line}" for line in last)


# -- processes ---------------------------------------------------------------------------------


class Component:
    """A subprocess of the demo (the sink, the server): own session, log file, clean stop."""

    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], log: Path, pid_file: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log = log
        # For scripts/demo.sh, which stops what a killed driver left behind.
        self.pid_file = pid_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C reaches only the driver, which stops the components
                # in order (server before sink, so the sink sees the server's last events).
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self.proc.pid}\n", encoding="utf-8")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self, while_doing: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise StepFailed(
                f"the {self.name} exited with code {self.proc.returncode} while {while_doing}",
                self.log,
            )

    def stop(self, timeout: float) -> int | None:
        """The exit code after SIGTERM, or None when it had to be killed after ``timeout``."""
        if self.proc is None:
            return None
        try:
            return harness.stop_process(self.proc, timeout)
        finally:
            self.pid_file.unlink(missing_ok=True)


def wait_for(
    what: str,
    check: Callable[[], T],
    timeout: float,
    *,
    until: Callable[[T], object] = bool,
    component: Component | None = None,
    interval: float = 0.25,
    hint: str = "",
) -> T:
    """``harness.wait_for`` as a step of the demo: it fails as soon as ``component`` exits, and
    with that component's log to show."""
    try:
        return harness.wait_for(
            what,
            check,
            timeout,
            interval,
            until=until,
            process=component.proc if component is not None else None,
        )
    except harness.ChildExited as exc:
        assert component is not None
        raise StepFailed(
            f"the {component.name} exited with code {exc.returncode} while the demo waited for "
            f"{what}",
            component.log,
        ) from None
    except harness.WaitTimeout as exc:
        raise StepFailed(
            f"{exc}{'; ' + hint if hint else ''}", component.log if component else None
        ) from None


# -- Kafka helpers -----------------------------------------------------------------------------


def kafka_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        # librdkafka's informational lines (a purged queue at close) are noise in the demo.
        "log_level": 4,
        **KafkaSecurity.from_env().librdkafka(),
    }


def check_broker(bootstrap: str, timeout: float = 15.0) -> None:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient(kafka_config(bootstrap)).list_topics(timeout=timeout)
    except Exception as exc:
        raise StepFailed(
            f"no Kafka broker answers at {bootstrap} within {timeout:.0f} s ({exc}); expected a "
            "running broker there: unset KAFKA_BOOTSTRAP_SERVERS to let the demo start its own"
        ) from None


def message_count(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka_config(bootstrap), "group.id": f"demo-count-{uuid.uuid4().hex}"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        total = 0
        for p in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


# -- the run: sink, server, traffic -----------------------------------------------------------


@dataclass
class DemoRunResult:
    sink_env: dict[str, str]
    requests_sent: int = 0
    requests_malformed: int = 0
    events: int = 0
    dead_letters: int = 0
    server_summary: str = ""
    swap_line: str = ""


def sink_environment(
    options: DemoOptions,
    bootstrap: str,
    *,
    registry_url: str | None = None,
    atlas: tuple[str, str | None, str | None] | None = None,
) -> dict[str, str]:
    """The sink's settings alone, as ``python -m atlas_sink`` reads them (``config`` shows
    them); they go on top of ``base_environment()``."""
    url, user, password = atlas if atlas is not None else (None, None, None)
    return harness.sink_environment(
        bootstrap,
        options.events_topic,
        group=options.sink_group,
        dlq_topic=options.dlq_topic,
        catalog=options.catalog_path if atlas is None else None,
        atlas_url=url,
        atlas_auth=(user, password) if user and password else None,
        registry_url=registry_url or None,
        base={},
        settings={"SINK_BATCH_MAX_WAIT_SECONDS": "0.5"},
    )


def base_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the sink, the server and the report inherit: ``base`` (this process's environment)
    without a shell's sink settings, but with the user's connection settings (a secured
    broker's, a registry's or Atlas's credentials), which the demo's own clients use too."""
    return harness.child_environment(base, keep=_FORWARDED)


def _metrics_url(log: Path) -> str | None:
    """The sink logs the address of /metrics (JSON lines) once it serves them."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if "serving /metrics" in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return str(json.loads(line)["url"])
    return None


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _last_line(log: Path, marker: str) -> str:
    with contextlib.suppress(OSError):
        for line in reversed(log.read_text(encoding="utf-8", errors="replace").splitlines()):
            if marker in line:
                return line.split(": ", 1)[-1] if ": " in line else line
    return ""


def _count_lines(log: Path, marker: str) -> int:
    with contextlib.suppress(OSError):
        return log.read_text(encoding="utf-8", errors="replace").count(marker)
    return 0


class DemoRun:
    """The sink and the server as subprocesses, and the traffic in this process: the demo's
    processes around atlas_sink.core.pipeline.Pipeline, which runs inside the sink."""

    def __init__(
        self,
        options: DemoOptions,
        bootstrap: str,
        progress: Progress,
        sink_env: Mapping[str, str],
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.options = options
        self.bootstrap = bootstrap
        self.progress = progress
        self.result = DemoRunResult(sink_env=dict(sink_env))
        # The server and the sink must see only the settings made here, not a shell's leftovers.
        base = base_environment(base_env)
        self.base_env = base
        self.sink = Component(
            "sink",
            [sys.executable, "-m", "atlas_sink", "run"],
            {**base, **sink_env},
            options.log_dir / "sink.log",
            options.work_dir / "sink.pid",
        )
        ready_file = options.work_dir / "server.ready"
        self.ready_file = ready_file
        self._publish_failure: StepFailed | None = None
        server_env = {**base, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
        if "SCHEMA_REGISTRY_URL" in sink_env:
            server_env["SCHEMA_REGISTRY_URL"] = sink_env["SCHEMA_REGISTRY_URL"]
        engine = (
            ["demo.flink_job", "--work-dir", str(options.work_dir / "flink")]
            if options.engine == "flink"
            else ["demo.server"]
        )
        self.server = Component(
            "server",
            [
                sys.executable,
                "-m",
                *engine,
                "--bootstrap",
                bootstrap,
                "--input-topic",
                options.input_topic,
                "--output-topic",
                options.output_topic,
                "--control-topic",
                options.control_topic,
                "--events-topic",
                options.events_topic,
                "--model-name",
                options.model_name,
                "--cluster",
                options.cluster,
                "--group-id",
                options.server_group,
                "--window-seconds",
                f"{options.window_seconds:g}",
                "--ready-file",
                str(ready_file),
            ],
            server_env,
            options.log_dir / "server.log",
            options.work_dir / "server.pid",
        )

    def run(self) -> DemoRunResult:
        """Sink up, version 1 published, server up, traffic with version 2 published midway,
        drain, both stopped. Stops both on any failure."""
        try:
            self.start_sink()
            self.publish("1")
            self.start_server()
            self.send_traffic()
            self.stop_server()
            self.stop_sink()
        finally:
            self.abort()
        return self.result

    def start_sink(self) -> None:
        o = self.options
        target = (
            f"embedded catalog {o.catalog_path}"
            if self.result.sink_env["SINK_TARGET"] == "local"
            else f"Atlas at {self.result.sink_env['ATLAS_URL']}"
        )
        with self.progress.step("sink start"):
            began = time.monotonic()
            self.sink.start()
            url: list[str] = []

            def ready() -> bool:
                if not url:
                    found = _metrics_url(self.sink.log)
                    if found is None:
                        return False
                    url.append(found)
                return _ready(url[0])

            wait_for(
                "the sink to be ready (/readyz)",
                ready,
                o.start_timeout,
                component=self.sink,
                hint="is the target reachable? see the sink's log",
            )
        self.progress.line(
            f"sink: consuming {o.events_topic} into the {target} "
            f"({time.monotonic() - began:.1f} s; metrics at {url[0]}/metrics)"
        )

    def publish(self, version: str) -> None:
        """Train a version and publish its descriptor on the control topic, as a data
        science team's pipeline would (``python -m demo.publish_model``)."""
        from demo import descriptor
        from demo.publish_model import build, publish

        o = self.options
        began = time.monotonic()
        built = build(version, o.work_dir / "publisher", model_name=o.model_name)
        try:
            publish(self.bootstrap, o.control_topic, descriptor.encode(built), built.name)
        except Exception as exc:
            raise StepFailed(f"version {version} could not be published: {exc}") from None
        self.progress.line(
            f"publisher: {o.model_name} version {version} on {o.control_topic} "
            f"({time.monotonic() - began:.1f} s; {built.description})"
        )

    def _publish_in_background(self, version: str) -> None:
        try:
            self.publish(version)
        except StepFailed as exc:
            self._publish_failure = exc

    def start_server(self) -> None:
        o = self.options
        self.ready_file.unlink(missing_ok=True)
        with self.progress.step("server start", "server: loading version 1 and starting"):
            began = time.monotonic()
            self.server.start()
            wait_for(
                "the server to load its model and join its consumer group",
                self.ready_file.exists,
                o.start_timeout,
                component=self.server,
            )
            if o.engine == "flink":
                # The job runs before its instances have read the control topic; requests
                # that came first would find no model (and be answered with an error).
                wait_for(
                    "both of the Flink job's instances to load version 1",
                    lambda: _count_lines(self.server.log, "version 1 loaded") >= FLINK_PARALLELISM,
                    o.start_timeout,
                    component=self.server,
                )
        loaded = _last_line(self.server.log, "version 1 loaded")
        self.progress.line(
            f"server: serving {o.input_topic} -> {o.output_topic} "
            f"({time.monotonic() - began:.1f} s): {loaded}"
        )

    def send_traffic(self) -> None:
        from demo.traffic import TrafficResult, planned_count, send

        o = self.options
        planned = planned_count(o.rate, o.duration)

        ticks = iter(range(1_000_000))

        def report(sent: TrafficResult) -> None:
            # Every 5 s: notice a component that died mid-run, and the swap soon after it
            # happens; the traffic's own line every 10 s is enough to show it moves.
            self.server.check("serving traffic")
            self.sink.check("consuming events")
            if next(ticks) % 2:
                self.progress.line(f"traffic: {sent.sent}/{planned} requests sent")
            self._report_swap()

        with self.progress.step(
            "traffic",
            f"traffic: {planned} requests at {o.rate:g}/s for {o.duration:g} s; "
            f"model version 2 replaces version 1 after {o.swap_after:g} s",
        ):
            # Version 2 is published while traffic flows, as a team would release it.
            swap = threading.Timer(o.swap_after, self._publish_in_background, ("2",))
            swap.daemon = True
            swap.start()
            try:
                sent = send(
                    self.bootstrap,
                    o.input_topic,
                    rate=o.rate,
                    duration=o.duration,
                    error_rate=o.error_rate,
                    progress=report,
                    progress_every=5.0,
                )
            except StepFailed:
                swap.cancel()
                raise
            except Exception as exc:
                swap.cancel()
                raise StepFailed(f"the traffic generator failed: {exc}") from exc
            swap.join(timeout=o.start_timeout)
        if self._publish_failure is not None:
            raise self._publish_failure
        if swap.is_alive():
            raise StepFailed(
                f"version 2 was still being published {o.start_timeout:g} s after the traffic "
                "ended: is the broker healthy?"
            )
        if sent.failed:
            raise StepFailed(
                f"traffic: {sent.failed} of {sent.sent} requests were not delivered to "
                f"{o.input_topic} on {self.bootstrap}; is the broker healthy?"
            )
        self.result.requests_sent = sent.sent
        self.result.requests_malformed = sum(sent.malformed.values())
        self.progress.line(f"traffic: {sent.describe()}")

    def stop_server(self) -> None:
        o = self.options
        self._drain_and_stop(
            "server", self.server, o.server_group, o.input_topic, "score every request"
        )
        self.result.server_summary = (
            "was cancelled, every instance closed"
            if o.engine == "flink" and _last_line(self.server.log, "job cancelled")
            else _last_line(self.server.log, "stopped: ").removeprefix("stopped: ")
        )
        self._report_swap()
        if not self.result.swap_line:
            raise StepFailed(
                "the server never loaded model version 2: expected a swap after "
                f"{o.swap_after:g} s of traffic; lengthen --duration or shorten --swap-after",
                self.server.log,
            )
        self.progress.line(f"server: stopped cleanly after it {self.result.server_summary}")

    def _drain_and_stop(
        self, name: str, component: Component, group: str, topic: str, work: str
    ) -> None:
        """Wait until ``group`` has consumed all of ``topic``, then SIGTERM the component."""
        with self.progress.step(f"{name} drain and stop"):
            with harness.GroupOffsets(
                self.bootstrap, topic, group, client=kafka_config(self.bootstrap)
            ) as offsets:
                wait_for(
                    f"the {name} to {work} on {topic} (lag 0)",
                    offsets.lag,
                    self.options.drain_timeout,
                    until=lambda lag: lag == 0,
                    component=component,
                    interval=0.5,
                )
            code = component.stop(timeout=30.0)
        if code != 0:
            raise StepFailed(
                f"the {name} did not stop cleanly on SIGTERM (exit code {code}; None: killed "
                "after 30 s)",
                component.log,
            )

    def _report_swap(self) -> None:
        """Say once that version 2 took over, when the server's log first shows it."""
        if self.result.swap_line:
            return
        self.result.swap_line = _last_line(self.server.log, "replacing version")
        if self.result.swap_line:
            self.progress.line(f"server: {self.result.swap_line}")

    def stop_sink(self) -> None:
        o = self.options
        self._drain_and_stop("sink", self.sink, o.sink_group, o.events_topic, "commit every event")
        self.result.events = message_count(self.bootstrap, o.events_topic)
        self.result.dead_letters = message_count(self.bootstrap, o.dlq_topic)
        line = (
            f"sink: caught up and stopped; {self.result.events} lifecycle events on "
            f"{o.events_topic}, {self.result.dead_letters} dead letters"
        )
        if self.result.dead_letters:
            line += " (see them: python -m atlas_sink dlq list)"
        self.progress.line(line)

    def abort(self) -> None:
        """Stop whatever still runs: the server first, so the sink could still read it."""
        for component in (self.server, self.sink):
            if component.alive():
                component.stop(timeout=15.0)


# -- services ----------------------------------------------------------------------------------


@dataclass
class Services:
    """The local services this run started (and must stop)."""

    started: list[ManagedService] = field(default_factory=list)
    bootstrap: str = ""
    registry_url: str | None = None
    atlas: tuple[str, str | None, str | None] | None = None

    def stop(self, progress: Progress) -> None:
        for service in reversed(self.started):
            try:
                service.stop()
                progress.line(f"{service.name}: stopped")
            except Exception as exc:
                progress.line(
                    f"{service.name}: could not be stopped ({exc}); stop it with "
                    f"`python -m local_services {service.name} stop --state-dir "
                    f"{service.state_dir}`"
                )
        self.started.clear()


def _start_service(service: ManagedService, progress: Progress, what: str) -> str:
    from local_services import ServiceError

    with progress.step(f"{service.name} start", f"{service.name}: starting {what}"):
        try:
            result = service.start()
        except ServiceError as exc:
            raise StepFailed(f"{service.name} could not start: {exc}") from None
    how = (
        "already running"
        if result.already_running
        else (
            f"{result.install_seconds + result.startup_seconds:.1f} s, "
            f"{'cached' if result.used_cache else 'downloaded'} binaries"
        )
    )
    progress.line(f"{service.name}: ready at {result.address} ({how})")
    return str(result.address)


def start_services(options: DemoOptions, progress: Progress, services: Services) -> None:
    env_bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    state = options.work_dir
    if env_bootstrap:
        check_broker(env_bootstrap)
        progress.line(f"kafka: using KAFKA_BOOTSTRAP_SERVERS={env_bootstrap}")
        services.bootstrap = env_bootstrap
    else:
        from local_services import KafkaService

        kafka = KafkaService(state / "kafka")
        services.started.append(kafka)
        services.bootstrap = _start_service(
            kafka, progress, "the local broker (the first run fetches it with Maven)"
        )

    if os.environ.get("SCHEMA_REGISTRY_URL"):
        services.registry_url = os.environ["SCHEMA_REGISTRY_URL"]
        progress.line(f"registry: using SCHEMA_REGISTRY_URL={services.registry_url}")
    elif options.registry:
        from local_services import RegistryService

        registry = RegistryService(state / "registry")
        services.started.append(registry)
        services.registry_url = _start_service(
            registry, progress, "the local schema registry (the first run fetches it)"
        )

    atlas_url = os.environ.get("ATLAS_URL")
    if atlas_url:
        user = os.environ.get("ATLAS_USERNAME") or os.environ.get("ATLAS_USER")
        password = os.environ.get("ATLAS_PASSWORD")
        services.atlas = (atlas_url, user, password)
        progress.line(f"atlas: using ATLAS_URL={atlas_url}")
    elif options.atlas:
        from local_services import atlas as local_atlas

        atlas = local_atlas.AtlasService(state / "atlas", kafka_bootstrap=services.bootstrap)
        services.started.append(atlas)
        url = _start_service(
            atlas,
            progress,
            "Apache Atlas (first run: ~290 MB with Maven; start-up takes minutes)",
        )
        services.atlas = (url, local_atlas.USER, local_atlas.PASSWORD)


# -- the report --------------------------------------------------------------------------------


def sink_commands() -> dict[str, argparse.ArgumentParser]:
    """The sink CLI's subcommands, from its own parser (``report`` is being added)."""
    try:
        from atlas_sink.service.cli import build_parser

        parser = build_parser()
    except Exception as exc:  # a broken sink install must end the demo with a message
        raise StepFailed(
            f"the sink's command line cannot be loaded ({type(exc).__name__}: {exc}); "
            "expected `python -m atlas_sink --help` to work: reinstall with scripts/bootstrap.sh"
        ) from None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


_PICTURE_OPTIONS = (
    "--html",
    "--svg",
    "--picture",
    "--lineage-html",
    "--graph",
    "--output",
    "--out",
)


def picture_option(parser: argparse.ArgumentParser) -> str | None:
    """The option of a command that writes the lineage picture to a path, if it has one."""
    offered = {
        option: action
        for action in parser._actions
        for option in action.option_strings
        if action.nargs != 0  # a flag cannot take the path
    }
    return next((o for o in _PICTURE_OPTIONS if o in offered), None)


def _picture_path(options: DemoOptions, option: str) -> Path:
    return options.work_dir / f"lineage.{'svg' if 'svg' in option else 'html'}"


def show_report(
    options: DemoOptions,
    sink_env: Mapping[str, str],
    base_env: Mapping[str, str],
    progress: Progress,
) -> tuple[Path | None, bool]:
    """Print the model's report (``report`` when the sink has it, else ``lineage``); the path of
    the lineage picture when one was written, and whether the report's output named it."""
    commands = sink_commands()
    env = {**base_environment(base_env), **sink_env}
    on_atlas = sink_env.get("SINK_TARGET") != "local"
    candidates = [c for c in ("report", "lineage") if c in commands]
    if not candidates:
        raise StepFailed("the sink CLI has neither `report` nor `lineage`: is atlas_sink complete?")
    for command in candidates:
        argv = [sys.executable, "-m", "atlas_sink", command, options.model_name]
        picture: Path | None = None
        option = picture_option(commands[command])
        if option is not None:
            picture = _picture_path(options, option)
            picture.unlink(missing_ok=True)
            argv += [option, str(picture)]
        progress.line(f"report: python -m atlas_sink {' '.join(argv[3:])}")
        answer = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        if answer.returncode == 0:
            break
        log = options.log_dir / f"{command}.log"
        log.write_text(answer.stdout + answer.stderr, encoding="utf-8")
        # A report that cannot read this target yet (a usage error) still leaves the lineage
        # to show; anything else is a failure of the report itself.
        if command == "report" and on_atlas and answer.returncode == 2:
            reason = (answer.stderr.strip().splitlines() or ["no reason given"])[-1]
            progress.line(f"report: not available for this target ({reason}); lineage instead")
            continue
        raise StepFailed(
            f"`python -m atlas_sink {command} {options.model_name}` exited with code "
            f"{answer.returncode}",
            log,
        )
    print()
    print(answer.stdout.rstrip())
    print()
    if picture is None:
        # A command may also write the picture on its own and name it in its output.
        for match in re.finditer(r"(\S+\.(?:html|svg))\b", answer.stdout):
            found = Path(match.group(1))
            found = found if found.is_absolute() else REPO / found
            if found.is_file():
                picture = found
    if picture is None and command != "lineage" and "lineage" in commands:
        option = picture_option(commands["lineage"])
        if option is not None:
            picture = _picture_path(options, option)
            lineage = [sys.executable, "-m", "atlas_sink", "lineage", options.model_name]
            subprocess.run(
                [*lineage, option, str(picture)],
                cwd=REPO,
                env=env,
                capture_output=True,
                timeout=300,
                check=False,
            )
    if picture is None or not picture.is_file():
        return None, False
    return picture, str(picture) in answer.stdout


# -- main --------------------------------------------------------------------------------------


def prepare_work_dir(options: DemoOptions) -> None:
    """A fresh catalog, logs and model directory; service state dirs are theirs to manage."""
    work = options.work_dir
    work.mkdir(parents=True, exist_ok=True)
    for name in ("logs", "server", "publisher"):
        shutil.rmtree(work / name, ignore_errors=True)
    for path in work.glob("catalog.sqlite*"):
        path.unlink()
    for name in ("server.ready", "lineage.html", "lineage.svg"):
        (work / name).unlink(missing_ok=True)
    options.log_dir.mkdir(parents=True)


def run_demo(
    options: DemoOptions, progress: Progress, stopping: threading.Event | None = None
) -> int:
    """The demo; ``stopping`` is set before the clean-up, so that a signal handler that
    raises on the first signal only leaves the clean-up alone."""
    prepare_work_dir(options)
    services = Services()
    demo_run: DemoRun | None = None
    try:
        start_services(options, progress, services)
        with progress.step("topics"):
            try:
                created = harness.create_topics(
                    services.bootstrap,
                    [
                        options.input_topic,
                        options.output_topic,
                        options.control_topic,
                        options.events_topic,
                        options.dlq_topic,
                    ],
                    client=kafka_config(services.bootstrap),
                )
            except harness.TopicError as exc:
                raise StepFailed(str(exc)) from None
        progress.line(f"topics: {', '.join(created) or 'all'} {'created' if created else 'exist'}")
        sink_env = sink_environment(
            options, services.bootstrap, registry_url=services.registry_url, atlas=services.atlas
        )
        demo_run = DemoRun(options, services.bootstrap, progress, sink_env)
        demo_run.run()
        with progress.step("report"):
            picture, mentioned = show_report(options, sink_env, demo_run.base_env, progress)
        if services.atlas is None:
            print(f"catalog: {options.catalog_path} (SINK_CATALOG_PATH for atlas-sink commands)")
        else:
            print(f"catalog: Apache Atlas at {services.atlas[0]}")
        if picture is not None and not mentioned:
            print(f"lineage picture: {picture}")
        print(f"logs: {options.log_dir}")
        print("timings:")
        print(progress.table())
        return 0
    finally:
        if stopping is not None:
            stopping.set()
        if demo_run is not None:
            demo_run.abort()
        if options.keep_services and services.started:
            for service in services.started:
                progress.line(
                    f"{service.name}: left running (--keep-services); stop it with "
                    f"`python -m local_services {service.name} stop --state-dir "
                    f"{service.state_dir}`"
                )
        else:
            services.stop(progress)


def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    parser = argparse.ArgumentParser(
        prog="python -m demo.run",
        description="Run the whole pipeline on 127.0.0.1 for a short while and print the model's "
        "governance report: local Kafka, the sink (embedded catalog, or Atlas with ATLAS_URL or "
        "--atlas), the demo model server and its traffic. KAFKA_BOOTSTRAP_SERVERS / "
        "SCHEMA_REGISTRY_URL name running services instead of starting local ones.",
    )
    a = parser.add_argument
    a("--duration", type=float, default=d.duration, help="seconds of traffic (default 40)")
    a("--rate", type=float, default=d.rate, help="requests per second (default 20)")
    a(
        "--error-rate",
        type=float,
        default=d.error_rate,
        help="share of malformed requests (default 0.02)",
    )
    a(
        "--swap-after",
        type=float,
        dest="swap_after_seconds",
        help="seconds of traffic before version 2 replaces version 1 (default: half the duration)",
    )
    a(
        "--window",
        type=float,
        dest="window_seconds",
        default=d.window_seconds,
        help="scoring statistics window in seconds (default 5)",
    )
    a(
        "--engine",
        choices=("python", "flink"),
        default=d.engine,
        help="what serves the model: the Python service (default) or the PyFlink job, two "
        "parallel instances on a local Flink mini cluster (the flink extra)",
    )
    a("--atlas", action="store_true", help="start the project's own Apache Atlas as the target")
    a("--registry", action="store_true", help="start the local schema registry (Confluent format)")
    a(
        "--keep-services",
        action="store_true",
        help="leave Kafka (and registry, Atlas) running at the end, to explore",
    )
    a("--work-dir", type=Path, default=d.work_dir, help=f"default {d.work_dir}")
    return parser


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    if args.duration <= 0 or args.rate <= 0 or args.window_seconds <= 0:
        raise ValueError("--duration, --rate and --window must be positive")
    if not 0.0 <= args.error_rate <= 1.0:
        raise ValueError(f"--error-rate must be within [0, 1], got {args.error_rate}")
    swap = args.swap_after_seconds
    if swap is not None and not 0 < swap < args.duration:
        raise ValueError(
            f"--swap-after must be between 0 and --duration ({args.duration:g}), got {swap:g}: "
            "version 2 must arrive while traffic still flows"
        )
    return DemoOptions(
        duration=args.duration,
        rate=args.rate,
        error_rate=args.error_rate,
        swap_after_seconds=swap,
        window_seconds=args.window_seconds,
        work_dir=args.work_dir.absolute(),
        atlas=args.atlas,
        registry=args.registry,
        keep_services=args.keep_services,
        engine=args.engine,
        # Atlas takes minutes to start; a first Flink job fetches its connector and starts a JVM.
        start_timeout=900.0 if args.atlas else 300.0 if args.engine == "flink" else 90.0,
        drain_timeout=300.0 if args.atlas or os.environ.get("ATLAS_URL") else 60.0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Once only: a second Ctrl-C must not cut the clean-up short and leave servers behind.
        if not stopping.is_set():
            stopping.set()
            raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    progress = Progress()
    print(f"demo: the whole pipeline on 127.0.0.1; work dir {options.work_dir}", flush=True)
    try:
        return run_demo(options, progress, stopping)
    except StepFailed as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        tail = log_tail(exc.log)
        if tail:
            print(tail, file=sys.stderr)
        print(f"all logs: {options.log_dir}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"\ninterrupted ({exc}): everything the demo started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
