"""Fault figures for RELIABILITY.md: the sink killed, its catalog locked, the broker restarted
under a serving model, sink instances joining and leaving; each run ends with its catalog
compared with a reference built by one uninterrupted replay of the same topic.

    python bench/faults.py all              # full sizes: the figures in RELIABILITY.md
    python bench/faults.py kill             # one scenario: kill | outage | broker | scale
    python bench/faults.py all --small      # the sizes tests/test_faults.py runs in CI

One JSON object per figure on stdout, progress on stderr. The broker is the one named by
KAFKA_BOOTSTRAP_SERVERS, else the project's own (started if needed); the broker scenario
starts one of its own in a temporary directory, since it stops and restarts it. Sinks are
real ``python -m atlas_sink run`` processes writing one local catalog (SQLite) file; events
come from the real emitter. tests/test_faults.py runs the same functions at small sizes and
asserts on their results.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: python bench/faults.py
    sys.path.insert(0, str(REPO))

from atlas_sink.core import naming  # noqa: E402
from atlas_sink.core.entities import Ref  # noqa: E402
from atlas_sink.core.translate import SERVING_STATS  # noqa: E402
from capture.config import EmitterConfig  # noqa: E402
from capture.dataschema import data_schema  # noqa: E402
from capture.emitter import Emitter, EmitterStats  # noqa: E402
from capture.events import (  # noqa: E402
    Artifact,
    DataSource,
    Deployment,
    FieldSpec,
    LatencySummary,
    LogSketch,
    Metric,
    ModelIdentity,
    ModelLoaded,
    ModelType,
    Runtime,
    ScoringStats,
    Training,
)
from local_services import harness  # noqa: E402

T = TypeVar("T")
CLUSTER = "faults"
# librdkafka's default is 45 s: a killed sink's restarted self would wait that long for its
# partitions (the group waits for the dead member). The broker's minimum is 6 s.
SESSION_TIMEOUT_SECONDS = 6
INPUT = data_schema(
    [FieldSpec(name="alcohol", type="double"), FieldSpec(name="color_intensity", type="double")]
)
OUTPUT = data_schema([FieldSpec(name="cultivar", type="long", doc="predicted class")])
LATENCY = LatencySummary(
    min=0.001,
    max=0.02,
    mean=0.005,
    p50=0.004,
    p95=0.015,
    p99=0.02,
    sketch=LogSketch(relative_accuracy=0.01, first_index=-530, counts=[3, 0, 5, 1, 1]),
)


def note(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


# -- Kafka helpers -----------------------------------------------------------------------------


def dlq(topic: str) -> str:
    return f"{topic}.dlq"


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[tuple[bytes, bytes]]:
    """Every message's (key, value), partition by partition, up to the current end."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"faults-read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        remaining = {p for p in partitions if ends[p] > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in remaining])
        out: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while remaining:
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {topic}: partitions {remaining} not read to the end")
            for msg in consumer.consume(1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"reading {topic}: {err}")
                    continue
                out.append((msg.key() or b"", msg.value() or b""))
                if (msg.offset() or 0) >= ends[msg.partition() or 0] - 1:
                    remaining.discard(msg.partition() or 0)
        return out
    finally:
        consumer.close()


# -- the workload ------------------------------------------------------------------------------


def model_loaded(model: str, version: int, replaces: int | None) -> ModelLoaded:
    return ModelLoaded(
        model_type=ModelType(
            framework="sklearn", framework_version="1.5.0", algorithm="RandomForestClassifier"
        ),
        artifact=Artifact(
            uri=f"s3://models/{model}/{version}/model.pkl",
            scheme="s3",
            encrypted_at_rest=True,
            access_mode="private",
        ),
        training=_training(model, version),
        metrics=[Metric(name="accuracy", value=0.9 + version / 100, split="test")],
        input_schema=INPUT,
        output_schema=OUTPUT,
        runtime=Runtime(language="python", language_version="3.11", host="h1", replicas=2),
        replaces_version=str(replaces) if replaces else None,
        inputs=[f"kafka://{model}-requests"],
        outputs=[f"kafka://{model}-scores"],
        owner="data-science",
        classifications=["Confidential"] if model.endswith("0") else [],
    )


def _training(model: str, version: int) -> Training:
    # Each model's training file has a schema of its own. A schema shared by the data sets of
    # two models would make the catalog depend on the order of events of different models,
    # which Kafka does not keep: see test_a_schema_shared_by_two_data_sets_... in
    # tests/test_faults.py.
    schema = data_schema([*INPUT.fields, FieldSpec(name=f"{model}_label", type="long")])
    return Training(
        sources=[
            DataSource(uri=f"file:///data/{model}.csv", name=model, format="csv", schema=schema)
        ],
        run_id=f"run-{model}-{version}",
        hyper_parameters={"n_estimators": str(10 * version)},
    )


@dataclass
class Expected:
    """What the catalog must hold once every event is applied once."""

    events: int = 0
    requests: dict[str, int] = field(default_factory=dict)  # deployment qualifiedName -> total
    errors: dict[str, int] = field(default_factory=dict)


class Workload:
    """``events`` lifecycle events and scoring windows from ``servers`` model servers (one
    emitter each, ``models`` models each), paced at ``rate`` events per second.

    Per (server, model): a load, a schema change, then windows; every ``version_every`` steps
    (a fifth of the run) a new version replaces the old one. Request counts vary per window,
    so a window lost or counted twice shows in the deployment's totals.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        events: int,
        rate: float,
        *,
        servers: int = 6,
        models: int = 3,
    ) -> None:
        self.topic = topic
        self.events = events
        self.rate = rate
        self.produced = 0
        self.expected = Expected()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        # Two thirds as many distinct models as (server, model) pairs: most servers serve
        # models of their own, some serve the same model as another (two producers per key),
        # and the keys spread over every partition.
        distinct = max(servers * models * 2 // 3, 1)
        self._pairs = [
            (s, ModelIdentity(name=f"model{(s * models + m) % distinct}", version="1"))
            for s in range(servers)
            for m in range(models)
        ]
        self._emitters = [
            Emitter(
                EmitterConfig(
                    bootstrap_servers=bootstrap,
                    topic=topic,
                    queue_size=max(events, 10_000),
                    close_timeout_seconds=120,
                ),
                Deployment(server_kind="python", server_name=f"server-{s}", cluster=CLUSTER),
            )
            for s in range(servers)
        ]
        steps = events // len(self._pairs) + 2
        # About five versions of every model, whatever the size: replacements are exercised.
        self.version_every = max(steps // 5, 10)
        # Windows end in the past: the sink refuses times in the future.
        self._first_window = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=steps + 2)
        self._thread = threading.Thread(target=self._run, name="faults-workload", daemon=True)

    def start(self) -> Workload:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> Expected:
        """Wait until every event is produced and acknowledged; fails if any was dropped."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the workload produced {self.produced} of {self.events} events")
        if self._error is not None:
            raise RuntimeError("the workload failed") from self._error
        for emitter in self._emitters:
            stats = emitter.stats()
            if stats.dropped or stats.delivered != stats.enqueued:
                raise RuntimeError(f"the workload's emitter lost events: {stats}")
        return self.expected

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            started = time.monotonic()
            steps: dict[int, int] = collections.Counter()
            for n in range(self.events):
                if n % 50 == 0:
                    wait = started + n / self.rate - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                index = n % len(self._pairs)
                self._emit_step(index, steps[index])
                steps[index] += 1
                self.produced += 1
            for emitter in self._emitters:
                emitter.close(120)
        except BaseException as exc:
            self._error = exc

    def _emit_step(self, index: int, step: int) -> None:
        server, model = self._pairs[index]
        emitter = self._emitters[server]
        version = 1 + step // self.version_every
        identity = ModelIdentity(name=model.name, version=str(version))
        self.expected.events += 1
        if step % self.version_every == 0:
            replaces = version - 1 if version > 1 else None
            emitter.model_loaded(identity, model_loaded(model.name, version, replaces))
            return
        if step == 1:
            emitter.schema_changed(identity, "OUTPUT", OUTPUT, previous=INPUT)
            return
        requests = 1 + (step * 7 + index) % 23
        errors = min(step % 3, requests)
        start = self._first_window + timedelta(minutes=step)
        stats = ScoringStats(
            window_start=start,
            window_end=start + timedelta(minutes=1),
            request_count=requests,
            error_count=errors,
            errors_by_kind={"timeout": errors} if errors else {},
            latency=LATENCY,
        )
        emitter._emit(identity, stats)  # what a recorder's closed window sends
        key = naming.deployment(f"server-{server}", model.name, CLUSTER)
        self.expected.requests[key] = self.expected.requests.get(key, 0) + requests
        self.expected.errors[key] = self.expected.errors.get(key, 0) + errors


# -- sink processes ----------------------------------------------------------------------------


def sink_env(bootstrap: str, topic: str, group: str, catalog: Path, **extra: str) -> dict[str, str]:
    # Nothing of the caller's sink or Atlas settings leaks in: this sink is exactly this.
    return harness.sink_environment(
        bootstrap,
        topic,
        group=group,
        dlq_topic=dlq(topic),
        catalog=catalog,
        settings={
            "SINK_SESSION_TIMEOUT_SECONDS": str(SESSION_TIMEOUT_SECONDS),
            "SINK_BATCH_MAX_WAIT_SECONDS": "0.3",
            **extra,
        },
    )


class SinkProcess:
    """``python -m atlas_sink run`` with its JSON log read as it comes (and kept in a file)."""

    def __init__(self, env: dict[str, str], log_file: Path) -> None:
        self.log_file = log_file
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atlas_sink", "run"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url: str | None = None
        self.assignments: list[list[str]] = []  # every "partitions assigned", in order
        self.assigned_at: float | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log_file.open("a", encoding="utf-8") as out:
            for line in self.proc.stderr:
                out.write(line)
                self.tail.append(line.rstrip())
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                msg = entry.get("msg")
                if msg == "serving /metrics, /healthz, /readyz":
                    self.url = entry.get("url")
                elif msg == "partitions assigned":
                    self.assignments.append(list(entry.get("partitions") or []))
                    self.assigned_at = time.monotonic()

    def why(self) -> str:
        code = self.proc.poll()
        state = "running" if code is None else f"exited with {code}"
        return f"sink pid {self.pid} {state}; last log lines:\n" + "\n".join(self.tail)

    def wait(
        self,
        what: str,
        probe: Callable[[], T],
        timeout: float,
        *,
        until: Callable[[T], object] = bool,
    ) -> float:
        """``harness.wait_for`` while this sink runs (its death ends the wait); the seconds it
        took, which are figures of RELIABILITY.md."""
        began = time.monotonic()
        harness.wait_for(what, probe, timeout, until=until, context=self.why, process=self.proc)
        return time.monotonic() - began

    def wait_assigned(self, timeout: float = 60.0) -> float:
        """Seconds from the start until the group gave it partitions."""
        self.wait("an assignment", lambda: bool(self.assignments and self.assignments[-1]), timeout)
        assert self.assigned_at is not None
        return self.assigned_at - self.started

    def get(self, path: str) -> tuple[int, str]:
        if self.url is None:
            return 0, ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as answer:
                return int(answer.status), answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str) -> float | None:
        status, text = self.get("/metrics")
        if status != 200:
            return None
        for line in text.splitlines():
            if line.startswith(f"{name} ") or line.startswith(f"{name}{{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def rss_kib(self) -> int:
        """Resident set size now, from /proc (0 once the process is gone)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(5)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, and the exit code (the sink leaves the group and commits nothing more)."""
        code = harness.stop_process(self.proc, timeout)
        self._reader.join(5)
        if code is None:
            raise RuntimeError(f"the sink did not stop within {timeout} s: {self.why()}")
        return code


# -- catalogs ----------------------------------------------------------------------------------

Row = tuple[str, str, str, str, tuple[str, ...], str]


def dump(path: Path) -> list[Row]:
    """Every entity with every attribute, reference and classification: what "equal" means."""
    from atlas_sink.targets.local import LocalCatalog

    with LocalCatalog(path) as catalog:
        return [
            (
                e.type_name,
                e.qualified_name,
                json.dumps(e.attributes, sort_keys=True),
                repr(sorted(e.references.items())),
                e.classifications,
                json.dumps(e.propagated_classifications, sort_keys=True),
            )
            for e in catalog.find()
        ]


def differences(live: list[Row], reference: list[Row], limit: int = 5) -> list[str]:
    """The first few ways two dumps differ, readable in a test failure."""
    by_ref = {(r[0], r[1]): r for r in reference}
    by_live = {(r[0], r[1]): r for r in live}
    found = [f"missing from the live catalog: {k}" for k in sorted(by_ref.keys() - by_live)]
    found += [f"not in the reference: {k}" for k in sorted(by_live.keys() - by_ref)]
    for key in sorted(by_ref.keys() & by_live.keys()):
        if by_ref[key] != by_live[key]:
            a, b = json.loads(by_live[key][2]), json.loads(by_ref[key][2])
            changed = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
            detail = {n: (a.get(n), b.get(n)) for n in changed[:4]}
            found.append(f"{key} differs (live, reference): {detail or by_live[key][3:]}")
    if len(live) != len(by_live):
        found.append(f"the live catalog lists {len(live) - len(by_live)} entities twice")
    return found[:limit]


def totals(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Lifetime requests and errors per deployment qualifiedName: the sums over the live
    figures of the versions each served."""
    from atlas_sink.targets.local import LocalCatalog

    with LocalCatalog(path) as catalog:
        figures = catalog.find(SERVING_STATS)
    requests: dict[str, int] = {}
    errors: dict[str, int] = {}
    for entity in figures:
        deployment = entity.references["deployment"]
        assert isinstance(deployment, Ref)
        lifetime = entity.attributes.get("lifetime") or {}
        key = deployment.qualified_name
        requests[key] = requests.get(key, 0) + int(lifetime.get("requests") or 0)
        errors[key] = errors.get(key, 0) + int(lifetime.get("errors") or 0)
    return requests, errors


def reference(bootstrap: str, topic: str, path: Path) -> dict[str, Any]:
    """One uninterrupted replay of the whole topic into a fresh catalog file."""
    from atlas_sink.kafka.replay import replay
    from atlas_sink.runtime.config import load_config
    from atlas_sink.service import wiring
    from atlas_sink.targets.local import LocalCatalog

    config = load_config(
        {},
        overrides={
            "kafka_bootstrap_servers": bootstrap,
            "topics": [topic],
            "dlq_topic": dlq(topic),
            "group_id": f"faults-reference-{uuid.uuid4().hex[:8]}",
            "catalog_path": path,
        },
    )
    with LocalCatalog(path) as catalog:
        catalog.ensure_types()
        result = replay(config, wiring.build_pipeline(config, catalog))
    return result.as_dict()


@dataclass
class Comparison:
    """The live catalog against the reference, and both against what was sent."""

    entities: int
    identical: bool
    differences: list[str]
    totals_as_sent: bool  # every window counted once: no event lost, none counted twice
    reference_messages: int
    reference_dead_letters: dict[str, int]


def compare(bootstrap: str, topic: str, live: Path, expected: Expected, work: Path) -> Comparison:
    ref_path = work / "reference.sqlite"
    replayed = reference(bootstrap, topic, ref_path)
    live_dump, ref_dump = dump(live), dump(ref_path)
    requests, errors = totals(live)
    return Comparison(
        entities=len(live_dump),
        identical=live_dump == ref_dump,
        differences=differences(live_dump, ref_dump),
        totals_as_sent=(requests, errors) == (expected.requests, expected.errors),
        reference_messages=int(replayed["messages"]),
        reference_dead_letters=dict(replayed["dead_letters"]),
    )


# -- a. the sink killed at random points -------------------------------------------------------


@dataclass
class KillResult:
    events: int
    kills: int
    kills_with_backlog: int  # the sink had consumed-but-uncommitted or unread events
    restart_to_assigned_seconds: list[float]
    final_catch_up_seconds: float
    seconds: float
    comparison: Comparison


def sigkill_run(
    bootstrap: str,
    work: Path,
    *,
    events: int,
    kills: int,
    rate: float,
    max_life_seconds: float,
    seed: int = 6,
) -> KillResult:
    """Kill the sink ``kills`` times, each a random time into its work, while the workload
    runs; restart it every time; at the end it must equal the reference exactly."""
    started = time.monotonic()
    topic = f"faults.kill.{uuid.uuid4().hex[:8]}"
    harness.create_topics(bootstrap, [topic, dlq(topic)], partitions=3)
    group = f"faults-kill-{uuid.uuid4().hex[:8]}"
    live = work / "live.sqlite"
    env = sink_env(bootstrap, topic, group, live)
    offsets = harness.GroupOffsets(bootstrap, topic, group)
    rng = random.Random(seed)
    workload = Workload(bootstrap, topic, events, rate).start()
    restarts: list[float] = []
    with_backlog = 0
    try:
        for kill in range(kills):
            sink = SinkProcess(env, work / f"sink-{kill}.log")
            restarts.append(sink.wait_assigned(timeout=SESSION_TIMEOUT_SECONDS * 3 + 30))
            # A random moment of its working life: while it reads, writes or commits.
            threading.Event().wait(rng.uniform(0.05, max_life_seconds))
            if offsets.lag() > 0:
                with_backlog += 1
            sink.kill()
            note(f"kill {kill + 1}/{kills}: {workload.produced}/{events} produced")
        sink = SinkProcess(env, work / "sink-final.log")
        restarts.append(sink.wait_assigned(timeout=SESSION_TIMEOUT_SECONDS * 3 + 30))
        expected = workload.join(timeout=events / rate * 3 + 120)
        catch_up = sink.wait(
            "the backlog to be committed (lag 0)", offsets.lag, 300, until=lambda n: n == 0
        )
        code = sink.stop()
        if code != 0:
            raise RuntimeError(f"the final sink exited with {code}: {sink.why()}")
    finally:
        workload.stop()
        offsets.close()
    comparison = compare(bootstrap, topic, live, expected, work)
    return KillResult(
        events=expected.events,
        kills=kills,
        kills_with_backlog=with_backlog,
        restart_to_assigned_seconds=[round(s, 2) for s in restarts],
        final_catch_up_seconds=round(catch_up, 2),
        seconds=round(time.monotonic() - started, 1),
        comparison=comparison,
    )


# -- b. the catalog unavailable ----------------------------------------------------------------


@dataclass
class OutageResult:
    events: int
    outage_seconds: float
    seconds_to_not_ready: float  # from the lock until /readyz said so
    paused_gauge: float
    committed_during_outage: int  # offsets committed while the catalog was locked
    backlog_at_release: int
    catch_up_seconds: float  # from the release until that backlog was committed
    rss_before_kib: int
    rss_peak_paused_kib: int
    comparison: Comparison


@contextlib.contextmanager
def catalog_locked(path: Path) -> Iterator[None]:
    """Another process's exclusive write transaction on the catalog: the sink cannot write."""
    blocker = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def catalog_outage(
    bootstrap: str,
    work: Path,
    *,
    events: int,
    rate: float,
    outage_seconds: float,
    retry_max_seconds: float,
) -> OutageResult:
    topic = f"faults.outage.{uuid.uuid4().hex[:8]}"
    harness.create_topics(bootstrap, [topic, dlq(topic)], partitions=3)
    group = f"faults-outage-{uuid.uuid4().hex[:8]}"
    live = work / "live.sqlite"
    env = sink_env(bootstrap, topic, group, live, SINK_RETRY_MAX_SECONDS=str(retry_max_seconds))
    offsets = harness.GroupOffsets(bootstrap, topic, group)
    workload = Workload(bootstrap, topic, events, rate).start()
    sink = SinkProcess(env, work / "sink.log")
    try:
        sink.wait_assigned()
        # Working normally first: a quarter of the events in and committed.
        sink.wait(
            "a first part committed",
            lambda: sum(offsets.committed().values()),
            events / rate + 60,
            until=lambda count: count >= events // 4,
        )
        rss_before = sink.rss_kib()
        samples = [rss_before]
        with catalog_locked(live):
            locked = time.monotonic()
            committed_at_lock = offsets.committed()

            def paused() -> bool:
                samples.append(sink.rss_kib())
                return not sink.ready() and sink.metric("servemeta_sink_paused") == 1.0

            # The sink's write waits out SQLite's busy timeout (10 s) before it calls the
            # catalog unavailable.
            not_ready = sink.wait("the sink to pause", paused, outage_seconds + 30)
            gauge = sink.metric("servemeta_sink_paused") or 0.0
            while time.monotonic() - locked < outage_seconds:
                samples.append(sink.rss_kib())
                if sink.proc.poll() is not None:
                    raise RuntimeError(f"the sink died while the catalog was locked: {sink.why()}")
                threading.Event().wait(0.2)
            committed_at_release = offsets.committed()
            backlog_end = offsets.ends()
        released = time.monotonic()
        backlog = sum(backlog_end[p] - committed_at_release[p] for p in backlog_end)
        sink.wait(
            "the backlog of the outage to be committed",
            lambda: all(c >= backlog_end[p] for p, c in offsets.committed().items()),
            300,
        )
        catch_up = time.monotonic() - released
        expected = workload.join(timeout=events / rate * 3 + 120)
        sink.wait("everything committed (lag 0)", offsets.lag, 300, until=lambda n: n == 0)
        code = sink.stop()
        if code != 0:
            raise RuntimeError(f"the sink exited with {code}: {sink.why()}")
    finally:
        workload.stop()
        if sink.proc.poll() is None:
            sink.kill()
        offsets.close()
    moved = sum(committed_at_release[p] - committed_at_lock[p] for p in committed_at_lock)
    return OutageResult(
        events=expected.events,
        outage_seconds=outage_seconds,
        seconds_to_not_ready=round(not_ready, 2),
        paused_gauge=gauge,
        committed_during_outage=moved,
        backlog_at_release=backlog,
        catch_up_seconds=round(catch_up, 2),
        rss_before_kib=rss_before,
        rss_peak_paused_kib=max(samples),
        comparison=compare(bootstrap, topic, live, expected, work),
    )


# -- c. the broker stopped and restarted under a serving model ---------------------------------


class RestartableBroker:
    """A broker of its own, restarted on its data (same ports, ``keep_data``)."""

    def __init__(self, state_dir: Path) -> None:
        from local_services.kafka import KafkaService
        from local_services.process import free_port

        port = free_port()
        self.service = KafkaService(
            state_dir,
            port=port,
            controller_port=free_port(exclude={port}),
            keep_data=True,
            start_timeout=120,
        )
        self.address = self.service.start().address

    def stop(self) -> float:
        began = time.monotonic()
        self.service.stop()
        return time.monotonic() - began

    def start(self) -> float:
        began = time.monotonic()
        self.service.start()
        return time.monotonic() - began

    def close(self) -> None:
        self.service.stop()


@dataclass
class BrokerResult:
    spool: bool
    emitted: int  # events accepted by the emitters' API (lifecycle calls and windows)
    delivered: int
    dropped: dict[str, int]
    in_topic: int  # distinct event ids found in the topic afterwards
    in_producer_order: bool  # no event after a newer one of its producer instance and model
    calls: int  # serving-path calls timed
    call_p50_us: float
    call_p99_us: float
    call_max_ms: float
    broker_down_seconds: float  # from the stop until the restarted broker was ready
    peak_spooled: int
    # From the restarted broker being ready until deliveries resumed, and until the spool
    # was empty again (the same without a spool: nothing waits there); -1: not seen.
    seconds_to_resume: float
    seconds_to_drain: float
    spool_files_left: int


class _Server:
    """A model server's request loop: ``record()`` per request, a lifecycle call every tenth,
    each call timed; windows close on the emitter's own thread."""

    def __init__(self, emitter: Emitter, rate: float, durations: list[float]) -> None:
        self.emitter = emitter
        self.rate = rate
        self.durations = durations
        self.models = [ModelIdentity(name=f"served{m}", version="1") for m in range(3)]
        self.recorders = [emitter.scoring_recorder(m, window_seconds=0.5) for m in self.models]
        self.peak_spooled = 0

    def serve(
        self, seconds: float, first: int, watch: Callable[[EmitterStats], None] | None = None
    ) -> int:
        """Serve for ``seconds``; the number of lifecycle calls made. ``watch`` sees the
        emitter's stats every twentieth call."""
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            wait = started + n / self.rate - time.monotonic()
            if wait > 0:
                threading.Event().wait(wait)
            m = (first + n) % len(self.models)
            recorder = self.recorders[m]
            for i in range(10):
                began = time.perf_counter()
                recorder.record(0.002 + i / 10_000, "timeout" if i == 9 else None)
                self.durations.append(time.perf_counter() - began)
            began = time.perf_counter()
            if (first + n) % 2:
                self.emitter.schema_changed(self.models[m], "OUTPUT", OUTPUT, previous=INPUT)
            else:
                self.emitter.model_unloaded(self.models[m], reason=f"scale-down {first + n}")
            self.durations.append(time.perf_counter() - began)
            n += 1
            if n % 20 == 0:
                stats = self.emitter.stats()
                self.peak_spooled = max(self.peak_spooled, stats.spooled)
                if watch is not None:
                    watch(stats)
        return n


class _Recovery:
    """When, after the broker's restart, deliveries resumed and the spool was empty again."""

    def __init__(self, emitter: Emitter) -> None:
        self.since = time.monotonic()
        self.delivered = emitter.stats().delivered
        self.resumed: float | None = None
        self.drained: float | None = None

    def __call__(self, stats: EmitterStats) -> None:
        now = time.monotonic() - self.since
        if self.resumed is None and stats.delivered > self.delivered:
            self.resumed = now
        if self.resumed is not None and self.drained is None and stats.spooled == 0:
            self.drained = now


def broker_restart(
    work: Path,
    broker: RestartableBroker,
    *,
    spool: bool,
    rate: float,
    before_seconds: float,
    down_seconds: float,
    after_seconds: float,
    delivery_timeout_seconds: float,
) -> BrokerResult:
    """Serve a model through a broker stop and restart; half-way through the outage the
    server itself restarts (a new emitter, on the same spool directory when there is one)."""
    from atlas_sink.core.decode import Decoder

    topic = f"faults.broker.{'spool' if spool else 'plain'}.{uuid.uuid4().hex[:8]}"
    harness.create_topics(broker.address, [topic, dlq(topic)], partitions=3)
    spool_dir = work / f"spool-{uuid.uuid4().hex[:6]}" if spool else None
    config = EmitterConfig(
        bootstrap_servers=broker.address,
        topic=topic,
        delivery_timeout_seconds=delivery_timeout_seconds,
        close_timeout_seconds=1.0,
        spool_dir=spool_dir,
    )
    deployment = Deployment(server_kind="python", server_name="served", cluster=CLUSTER)
    durations: list[float] = []
    finished: list[EmitterStats] = []
    first = Emitter(config, deployment)
    server = _Server(first, rate, durations)
    calls = server.serve(before_seconds, 0)
    stop_seconds = broker.stop()
    calls += server.serve(down_seconds / 2, calls)
    # The model server restarts while the broker is still down.
    first.close()
    finished.append(first.stats())
    peak = server.peak_spooled
    second = Emitter(config, deployment)
    server = _Server(second, rate, durations)
    calls += server.serve(down_seconds / 2, calls)
    start_seconds = broker.start()
    recovery = _Recovery(second)
    calls += server.serve(after_seconds, calls, recovery)
    harness.wait_for("the events to be delivered", lambda: second.flush(1.0), 120)
    recovery(second.stats())
    second.close()
    finished.append(second.stats())
    peak = max(peak, server.peak_spooled)

    decoder = Decoder()
    seen: set[str] = set()
    last: dict[tuple[str, str], int] = {}
    in_order = True
    for _key, value in read_topic(broker.address, topic):
        envelope = decoder.decode(value).envelope
        if envelope.event_id in seen:
            continue  # sent again after a restart: the sink drops it as a duplicate
        seen.add(envelope.event_id)
        mark = (envelope.producer.instance_id, envelope.model.name)
        in_order = in_order and envelope.sequence > last.get(mark, 0)
        last[mark] = envelope.sequence
    dropped: dict[str, int] = {}
    for stats in finished:
        for reason, count in stats.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    ordered = sorted(durations)
    return BrokerResult(
        spool=spool,
        emitted=sum(s.enqueued + s.dropped.get("queue_full", 0) for s in finished),
        delivered=sum(s.delivered for s in finished),
        dropped=dropped,
        in_topic=len(seen),
        in_producer_order=in_order,
        calls=len(ordered),
        call_p50_us=round(ordered[len(ordered) // 2] * 1e6, 1),
        call_p99_us=round(ordered[int(len(ordered) * 0.99)] * 1e6, 1),
        call_max_ms=round(ordered[-1] * 1e3, 2),
        broker_down_seconds=round(stop_seconds + down_seconds + start_seconds, 1),
        peak_spooled=peak,
        seconds_to_resume=round(recovery.resumed or -1.0, 2),
        seconds_to_drain=round(recovery.drained or -1.0, 2),
        spool_files_left=len(list(spool_dir.glob("*.seg"))) if spool_dir else 0,
    )


# -- e. scale-out and scale-in -----------------------------------------------------------------


@dataclass
class ScaleResult:
    events: int
    partitions: int
    # Per sink instance, the partitions of each assignment it received, in order.
    assignments: dict[str, list[list[str]]]
    comparison: Comparison
    seconds: float


def scale_out(bootstrap: str, work: Path, *, events: int, rate: float) -> ScaleResult:
    """One sink, then a second and a third join mid-run, then the second leaves; all of them
    write the same catalog file."""
    started = time.monotonic()
    partitions = 6
    topic = f"faults.scale.{uuid.uuid4().hex[:8]}"
    harness.create_topics(bootstrap, [topic, dlq(topic)], partitions=partitions)
    group = f"faults-scale-{uuid.uuid4().hex[:8]}"
    live = work / "live.sqlite"
    env = sink_env(bootstrap, topic, group, live)
    offsets = harness.GroupOffsets(bootstrap, topic, group)
    workload = Workload(bootstrap, topic, events, rate).start()
    sinks: dict[str, SinkProcess] = {}

    def owned() -> int:
        return sum(int(s.metric("servemeta_sink_assigned_partitions") or 0) for s in running())

    def running() -> list[SinkProcess]:
        return [s for s in sinks.values() if s.proc.poll() is None]

    def committed() -> int:
        return sum(offsets.committed().values())

    def progressed(fraction: float) -> Callable[[int], bool]:
        return lambda count: count >= events * fraction

    try:
        sinks["first"] = SinkProcess(env, work / "sink-first.log")
        sinks["first"].wait_assigned()
        sinks["first"].wait(
            "a fifth committed", committed, events / rate + 60, until=progressed(0.2)
        )
        for name in ("second", "third"):
            sinks[name] = SinkProcess(env, work / f"sink-{name}.log")
            sinks[name].wait_assigned()
            harness.wait_for("every partition owned", owned, 60, until=lambda n: n == partitions)
            note(f"{name} sink joined: {[len(s.assignments) for s in sinks.values()]}")
        sinks["third"].wait(
            "three fifths committed", committed, events / rate + 60, until=progressed(0.6)
        )
        code = sinks["second"].stop()
        if code != 0:
            raise RuntimeError(f"the second sink exited with {code}")
        harness.wait_for("its partitions taken over", owned, 60, until=lambda n: n == partitions)
        expected = workload.join(timeout=events / rate * 3 + 120)
        harness.wait_for("everything committed (lag 0)", offsets.lag, 300, until=lambda n: n == 0)
        for name, sink in sinks.items():
            if sink.proc.poll() is None and sink.stop() != 0:
                raise RuntimeError(f"the {name} sink failed: {sink.why()}")
    finally:
        workload.stop()
        for sink in sinks.values():
            if sink.proc.poll() is None:
                sink.kill()
        offsets.close()
    return ScaleResult(
        events=expected.events,
        partitions=partitions,
        assignments={name: s.assignments for name, s in sinks.items()},
        comparison=compare(bootstrap, topic, live, expected, work),
        seconds=round(time.monotonic() - started, 1),
    )


# -- sizes and the command line ----------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    kill_events: int
    kills: int
    kill_rate: float
    kill_max_life_seconds: float
    outage_events: int
    outage_rate: float
    outage_seconds: float
    outage_retry_max_seconds: float
    broker_rate: float
    broker_down_seconds: float
    broker_delivery_timeout_seconds: float
    scale_events: int
    scale_rate: float


# Rates are chosen so the events keep coming for the whole scenario (each restart after a
# kill waits SESSION_TIMEOUT_SECONDS for the dead member's partitions).
FULL = Sizes(
    kill_events=100_000,
    kills=20,
    kill_rate=650,
    kill_max_life_seconds=2.0,
    outage_events=60_000,
    outage_rate=600,
    outage_seconds=60,
    outage_retry_max_seconds=30,
    broker_rate=200,
    broker_down_seconds=30,
    broker_delivery_timeout_seconds=5,
    scale_events=60_000,
    scale_rate=1_500,
)
SMALL = Sizes(
    kill_events=5_000,
    kills=5,
    kill_rate=150,
    kill_max_life_seconds=1.0,
    outage_events=4_000,
    outage_rate=150,
    outage_seconds=14,  # past the catalog's 10 s busy timeout, so the sink sees it
    outage_retry_max_seconds=2,
    broker_rate=50,
    broker_down_seconds=5,
    broker_delivery_timeout_seconds=1,
    scale_events=5_000,
    scale_rate=300,
)


def _emit(name: str, result: Any, out: TextIO) -> None:
    print(json.dumps({"scenario": name, **asdict(result)}, default=str), file=out, flush=True)


def run(scenarios: list[str], sizes: Sizes, out: TextIO = sys.stdout) -> None:
    bootstrap = ""
    if set(scenarios) - {"broker"}:
        from bench.common import kafka_bootstrap

        bootstrap = kafka_bootstrap()
    for name in scenarios:
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"faults-{name}-") as tmp:
            work = Path(tmp)
            note(f"{name}: starting")
            if name == "kill":
                _emit(
                    name,
                    sigkill_run(
                        bootstrap,
                        work,
                        events=sizes.kill_events,
                        kills=sizes.kills,
                        rate=sizes.kill_rate,
                        max_life_seconds=sizes.kill_max_life_seconds,
                    ),
                    out,
                )
            elif name == "outage":
                _emit(
                    name,
                    catalog_outage(
                        bootstrap,
                        work,
                        events=sizes.outage_events,
                        rate=sizes.outage_rate,
                        outage_seconds=sizes.outage_seconds,
                        retry_max_seconds=sizes.outage_retry_max_seconds,
                    ),
                    out,
                )
            elif name == "broker":
                broker = RestartableBroker(work / "kafka")
                try:
                    for spool in (False, True):
                        result = broker_restart(
                            work,
                            broker,
                            spool=spool,
                            rate=sizes.broker_rate,
                            before_seconds=3,
                            down_seconds=sizes.broker_down_seconds,
                            after_seconds=3,
                            delivery_timeout_seconds=sizes.broker_delivery_timeout_seconds,
                        )
                        _emit(name, result, out)
                finally:
                    broker.close()
            elif name == "scale":
                _emit(
                    name,
                    scale_out(bootstrap, work, events=sizes.scale_events, rate=sizes.scale_rate),
                    out,
                )
        note(f"{name}: {time.monotonic() - began:.0f} s")


SCENARIOS = ("kill", "outage", "broker", "scale")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("scenario", choices=(*SCENARIOS, "all"))
    parser.add_argument("--small", action="store_true", help="the CI sizes")
    args = parser.parse_args(argv)
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    run(scenarios, SMALL if args.small else FULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
