"""The emitter's disk spool: real files in tmp_path, a killed writer, corruption, restarts; and
the emitter's use of it against a stand-in for librdkafka that can be "down".

The stand-in keeps librdkafka's contract as the emitter sees it: produce() queues (BufferError
when full), poll() delivers in order while the broker is up and serves the callbacks,
purge() withdraws everything with _PURGE_QUEUE reports, len() counts what is not reported.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from atlas_sink.core.decode import Decoder
from capture.config import ConfigError, EmitterConfig
from capture.emitter import Emitter
from capture.events import Deployment, ModelIdentity
from capture.spool import MAGIC, Spool, SpoolInUse, frame_bytes
from tests import services

DEPLOYMENT = Deployment(server_kind="python", server_name="wine-scorer", cluster="local")
MODELS = (ModelIdentity(name="wine", version="1"), ModelIdentity(name="beer", version="3"))
DEADLINE = 10.0


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.01)


def fill(spool: Spool, count: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    frames = [(f"key-{i % 3}".encode(), f"value-{i}".encode() * (1 + i % 5)) for i in range(count)]
    for key, value in frames[start:]:
        assert spool.append(key, value) == "ok"
    spool.sync()
    return frames


def drain(spool: Spool, batch: int = 7) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    while True:
        frames = spool.read(batch)
        if not frames:
            return out
        for frame in frames:
            out.append((frame.key, frame.value))
            spool.ack(frame.token)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


# -- the spool on its own --------------------------------------------------------------------


def test_frames_come_back_in_order_and_sent_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=512)
    frames = fill(spool, 100)
    assert len(segments(tmp_path)) > 3  # rotated
    assert (spool.pending, spool.unsent, spool.recovered) == (100, 100, 0)

    first = spool.read(40)
    assert [(f.key, f.value) for f in first] == frames[:40]
    assert [f.token for f in first] == list(range(40))
    files_before = len(segments(tmp_path))
    for frame in reversed(first):  # acknowledgements may come in any order
        spool.ack(frame.token)
    assert spool.pending == 60
    assert len(segments(tmp_path)) < files_before  # fully acknowledged segments went

    assert drain(spool) == frames[40:]
    assert spool.empty and spool.size_bytes == 0
    assert segments(tmp_path) == []
    # Appending again after it emptied starts a fresh segment.
    assert spool.append(b"k", b"again") == "ok"
    assert [(f.key, f.value) for f in spool.read(5)] == [(b"k", b"again")]
    spool.close()


def test_a_restart_sends_what_was_not_acknowledged_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=300)
    frames = fill(spool, 50)
    for frame in spool.read(20):
        spool.ack(frame.token)
    spool.read(10)  # read (sent), never acknowledged: must come back
    spool.close()

    again = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=300)
    # Whole acknowledged segments are gone; the rest of the oldest one is sent again.
    assert 30 <= again.recovered <= 50
    replayed = drain(again)
    assert replayed == frames[50 - again.recovered :]
    assert again.truncated_bytes == 0
    again.close()


def test_one_directory_serves_one_emitter(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    with pytest.raises(SpoolInUse, match="in use by another emitter"):
        Spool(tmp_path, max_bytes=10_000)
    spool.close()
    Spool(tmp_path, max_bytes=10_000).close()  # released at close


def test_the_bound_refuses_frames_until_space_is_freed(tmp_path: Path) -> None:
    frame = len(frame_bytes(b"k", b"x" * 100))
    bound = len(MAGIC) * 2 + frame * 10
    spool = Spool(tmp_path, max_bytes=bound, segment_bytes=len(MAGIC) + frame * 5)
    results = [spool.append(b"k", b"x" * 100) for _ in range(12)]
    assert results == ["ok"] * 10 + ["full"] * 2
    assert spool.size_bytes == bound
    for f in spool.read(5):  # the first segment, whole
        spool.ack(f.token)
    assert spool.size_bytes == len(MAGIC) + frame * 5
    assert [spool.append(b"k", b"x" * 100) for _ in range(6)] == ["ok"] * 5 + ["full"]
    spool.close()


def test_a_torn_tail_is_truncated_and_everything_before_it_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000)
    frames = fill(spool, 20)
    spool.close()
    (path,) = segments(tmp_path)
    whole = path.stat().st_size
    torn = frame_bytes(b"key", b"never completed")[:-4]
    with path.open("ab") as f:
        f.write(torn)

    again = Spool(tmp_path, max_bytes=1_000_000)
    assert (again.recovered, again.truncated_bytes) == (20, len(torn))
    assert path.stat().st_size == whole
    # New frames follow the intact ones, and all come back in order.
    assert again.append(b"k", b"after") == "ok"
    assert drain(again) == [*frames, (b"k", b"after")]
    again.close()


def test_garbage_in_the_middle_cuts_that_segment_there_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=400)
    frames = fill(spool, 40)
    spool.close()
    first, *rest = segments(tmp_path)
    assert rest  # the damage stays in the first of several segments
    per_segment = sum(1 for _ in _frames_in(first))
    data = bytearray(first.read_bytes())
    # Flip a byte inside the body of the third frame: its CRC no longer matches.
    offset = len(MAGIC)
    for _ in range(2):
        offset += 8 + int.from_bytes(data[offset : offset + 4], "big")
    data[offset + 12] ^= 0xFF
    first.write_bytes(bytes(data))

    again = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=400)
    assert again.recovered == 40 - (per_segment - 2)
    assert again.truncated_bytes > 0
    assert drain(again) == frames[:2] + frames[per_segment:]
    again.close()


def _frames_in(path: Path) -> Iterator[int]:
    data = path.read_bytes()
    offset = len(MAGIC)
    while offset < len(data):
        yield offset
        offset += 8 + int.from_bytes(data[offset : offset + 4], "big")


def test_a_file_that_is_not_a_segment_is_set_aside_not_sent(tmp_path: Path) -> None:
    (tmp_path / "0000000000000001.seg").write_bytes(b"something else entirely")
    (tmp_path / "0000000000000002.seg").write_bytes(MAGIC[:3])  # cut off while created
    spool = Spool(tmp_path, max_bytes=10_000)
    assert spool.recovered == 0 and spool.empty
    assert (tmp_path / "0000000000000001.seg.corrupt").exists()
    assert segments(tmp_path) == []
    assert spool.append(b"k", b"v") == "ok"
    assert segments(tmp_path) == [tmp_path / "0000000000000003.seg"]  # never a reused name
    spool.close()


_WRITER = """
import sys
from capture.spool import Spool
spool = Spool(sys.argv[1], max_bytes=50_000_000, segment_bytes=64 * 1024)
i = 0
while True:
    spool.append(b"k", b"frame-%d" % i)
    i += 1
    if i % 100 == 0:
        spool.sync()
        print(i, flush=True)
"""


def test_a_writer_killed_mid_stream_leaves_an_intact_prefix(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        cwd=services.REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    reported = 0
    deadline = time.monotonic() + DEADLINE
    while reported < 3000:
        assert time.monotonic() < deadline, "the writer reported no progress"
        reported = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    spool = Spool(tmp_path, max_bytes=50_000_000, segment_bytes=64 * 1024)
    assert spool.recovered >= reported
    values = [v for _, v in drain(spool, batch=1000)]
    assert values == [b"frame-%d" % i for i in range(spool.recovered)]
    spool.close()


# -- the emitter with its spool ----------------------------------------------------------------


class _Message:
    def __init__(self, key: bytes, value: bytes) -> None:
        self._key, self._value = key, value

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


class FakeKafka:
    """librdkafka as the emitter sees it, with a broker that is down until ``up`` is set."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.up = threading.Event()
        self.delivered: list[tuple[bytes, bytes]] = []
        self.purges = 0
        self._lock = threading.Lock()
        self._waiting: list[tuple[bytes, bytes, Any]] = []
        self._reports: list[tuple[Any, KafkaError | None, _Message]] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any = None) -> None:
        with self._lock:
            if len(self._waiting) >= self.capacity:
                raise BufferError("Local: Queue full")
            self._waiting.append((key, value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        if not self._reports and not (self.up.is_set() and self._waiting) and timeout > 0:
            self.up.wait(timeout)  # as librdkafka: block until something can happen
        with self._lock:
            if self.up.is_set():
                for key, value, report in self._waiting:
                    self.delivered.append((key, value))
                    self._reports.append((report, None, _Message(key, value)))
                self._waiting = []
            reports, self._reports = self._reports, []
        for report, err, msg in reports:
            report(err, msg)
        return len(reports)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        with self._lock:
            self.purges += 1
            gone, self._waiting = self._waiting, []
            self._reports += [
                (report, KafkaError(KafkaError._PURGE_QUEUE), _Message(key, value))
                for key, value, report in gone
            ]

    def flush(self, timeout: float = 0) -> int:
        deadline = time.monotonic() + timeout
        while len(self) and time.monotonic() < deadline:
            self.poll(min(0.01, max(deadline - time.monotonic(), 0)))
        self.poll(0)
        return len(self)

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._reports)


def spool_config(directory: Path, **overrides: Any) -> EmitterConfig:
    settings: dict[str, Any] = {
        "bootstrap_servers": "127.0.0.1:9",
        "spool_dir": directory,
        "delivery_timeout_seconds": 0.3,
        "close_timeout_seconds": 0.5,
        "tick_seconds": 0.02,
    }
    settings.update(overrides)
    return EmitterConfig(**settings)


def emit(emitter: Emitter, count: int) -> None:
    # Names and reasons of one length: every event encodes to the same size.
    for i in range(count):
        emitter.model_unloaded(MODELS[i % 2], reason=f"r{i:04d}")


def order(delivered: list[tuple[bytes, bytes]]) -> list[tuple[str, str, int]]:
    """(instance, model, sequence) of each delivered event, as the sink reads them."""
    decoder = Decoder()
    out = []
    for key, value in delivered:
        event = decoder.decode(value)
        envelope = event.envelope
        assert key == f"local/{envelope.model.name}".encode()
        out.append((envelope.producer.instance_id, envelope.model.name, envelope.sequence))
    return out


def assert_in_producer_order(seen: list[tuple[str, str, int]]) -> None:
    """No event reaches Kafka after a newer one of its producer and model."""
    last: dict[tuple[str, str], int] = {}
    for instance, model, sequence in seen:
        assert sequence > last.get((instance, model), 0), (instance, model, sequence)
        last[instance, model] = sequence


def test_events_the_broker_cannot_take_are_spooled_and_a_restart_sends_them_first(
    tmp_path: Path,
) -> None:
    down = FakeKafka()
    first = Emitter(spool_config(tmp_path), DEPLOYMENT, producer=down)
    first_id = first.producer_identity.instance_id
    calls = []
    for i in range(60):
        started = time.perf_counter()
        first.model_unloaded(MODELS[i % 2], reason=f"r{i:04d}")
        calls.append(time.perf_counter() - started)
    # No acknowledgement within delivery_timeout_seconds: librdkafka's messages go to disk.
    wait_for("the events to be spooled", lambda: first.stats().spooled == 60)
    assert down.purges == 1
    emit(first, 15)  # while spooling, new events go straight to the spool, behind the others
    wait_for("the later events", lambda: first.stats().spooled == 75)
    first.close()
    stats = first.stats()
    assert (stats.enqueued, stats.delivered, stats.dropped, stats.spooled) == (75, 0, {}, 75)
    assert max(calls) < 0.05  # the serving path never waited for the broker or the disk

    up = FakeKafka()
    up.up.set()
    second = Emitter(spool_config(tmp_path), DEPLOYMENT, producer=up)
    assert second.stats().recovered == 75
    emit(second, 10)
    assert second.flush(DEADLINE)
    second.close()
    seen = order(up.delivered)
    assert len(seen) == 85
    assert [s[0] for s in seen] == [first_id] * 75 + [second.producer_identity.instance_id] * 10
    assert_in_producer_order(seen)
    stats = second.stats()
    assert (stats.delivered, stats.dropped, stats.spooled) == (85, {}, 0)
    assert segments(tmp_path) == []  # sent, then deleted


def test_when_the_broker_returns_the_spool_drains_then_events_go_direct(tmp_path: Path) -> None:
    kafka = FakeKafka()
    emitter = Emitter(spool_config(tmp_path), DEPLOYMENT, producer=kafka)
    emit(emitter, 30)
    wait_for("the events to be spooled", lambda: emitter.stats().spooled == 30)
    kafka.up.set()
    wait_for("the spool to drain", lambda: emitter.stats().delivered == 30)
    wait_for("direct sending", lambda: not emitter._spooling)
    emit(emitter, 20)
    assert emitter.flush(DEADLINE)
    emitter.close()
    assert emitter.stats().delivered == 50 and emitter.stats().dropped == {}
    seen = order(kafka.delivered)
    assert [s[2] for s in seen] == list(range(1, 51))  # one producer: its exact order
    assert segments(tmp_path) == []


def test_a_full_librdkafka_queue_sends_events_to_the_spool_at_once(tmp_path: Path) -> None:
    kafka = FakeKafka(capacity=8)
    # A delivery timeout far beyond the test: only the full queue can start the spooling.
    emitter = Emitter(
        spool_config(tmp_path, delivery_timeout_seconds=600), DEPLOYMENT, producer=kafka
    )
    emit(emitter, 40)
    wait_for("the events to be spooled", lambda: emitter.stats().spooled == 40)
    kafka.up.set()
    assert emitter.flush(DEADLINE)
    emitter.close()
    seen = order(kafka.delivered)
    assert [s[2] for s in seen] == list(range(1, 41))
    assert emitter.stats().dropped == {}


def test_a_full_spool_counts_what_it_drops(tmp_path: Path) -> None:
    probe = Emitter(spool_config(tmp_path / "probe"), DEPLOYMENT, producer=FakeKafka())
    emit(probe, 1)
    probe.close()
    frame = probe.stats().spool_bytes - len(MAGIC)  # what one event takes on disk
    kafka = FakeKafka()
    bound = len(MAGIC) + frame * 10 + frame // 2  # room for ten such events
    emitter = Emitter(
        spool_config(tmp_path / "s", spool_max_bytes=bound), DEPLOYMENT, producer=kafka
    )
    emit(emitter, 25)
    wait_for(
        "all accounted for", lambda: emitter.stats().spooled + emitter.stats().dropped_total == 25
    )
    stats = emitter.stats()
    assert (stats.spooled, stats.dropped) == (10, {"spool_full": 15})
    kafka.up.set()
    assert emitter.flush(DEADLINE)
    emitter.close()
    stats = emitter.stats()
    assert stats.delivered + stats.dropped_total == stats.enqueued == 25
    assert len(kafka.delivered) == 10


def test_close_with_the_broker_down_keeps_everything_on_disk(tmp_path: Path) -> None:
    kafka = FakeKafka()
    # A long delivery timeout: at close the events are still in "librdkafka", not spooled.
    emitter = Emitter(
        spool_config(tmp_path, delivery_timeout_seconds=600), DEPLOYMENT, producer=kafka
    )
    emit(emitter, 12)
    wait_for("the events handed over", lambda: len(kafka) == 12)
    emitter.close()
    assert emitter.stats().dropped == {}
    left = Spool(tmp_path, max_bytes=1_000_000)
    assert left.recovered == 12
    assert order([(f.key, f.value) for f in left.read(20)]) == [
        (emitter.producer_identity.instance_id, MODELS[i % 2].name, i + 1) for i in range(12)
    ]
    left.close()


def test_the_spool_is_off_unless_configured(tmp_path: Path) -> None:
    config = EmitterConfig(bootstrap_servers="127.0.0.1:9")
    assert config.spool_dir is None
    assert config.producer_config()["message.timeout.ms"] == 30_000
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "SERVEMETA_SPOOL_DIR": str(tmp_path / "spool"),
        "SERVEMETA_SPOOL_MAX_BYTES": "1048576",
    }
    config = EmitterConfig.from_env(env)
    assert (config.spool_dir, config.spool_max_bytes) == (tmp_path / "spool", 1_048_576)
    # librdkafka never gives up on a message: the emitter moves it to the spool instead.
    assert config.producer_config()["message.timeout.ms"] == 0
    with pytest.raises(ConfigError, match="SERVEMETA_SPOOL_MAX_BYTES must be a positive int"):
        EmitterConfig.from_env({**env, "SERVEMETA_SPOOL_MAX_BYTES": "0"})
    held = Spool(tmp_path / "spool", max_bytes=1000)
    with pytest.raises(SpoolInUse):
        Emitter(config, DEPLOYMENT, producer=FakeKafka())
    held.close()


def test_the_spooled_count_is_exposed_to_prometheus(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from capture.metrics import register

    emitter = Emitter(spool_config(tmp_path), DEPLOYMENT, producer=FakeKafka())
    registry = CollectorRegistry()
    register(emitter, registry)
    emit(emitter, 7)
    wait_for("the events to be spooled", lambda: emitter.stats().spooled == 7)
    text = generate_latest(registry).decode()
    assert 'servemeta_emitter_spooled{topic="servemeta.model-events"} 7.0' in text
    emitter.close()
