"""The emitter's API without a reachable broker: call-time errors, drops counted, never blocks."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from capture.config import ConfigError, EmitterConfig, KafkaSecurity
from capture.emitter import Emitter
from capture.events import Deployment, ModelIdentity, ModelLoaded, SchemaChanged
from capture.typecheck import EventValueError
from tests.conftest import INPUT, OUTPUT, model_loaded

DEPLOYMENT = Deployment(server_kind="python", server_name="wine-scorer", cluster="local")
MODEL = ModelIdentity(name="wine", version="1")


def _dead_port() -> int:
    # Bound but never listening: connections are refused at once, on loopback only.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stalled_emitter() -> Iterator[Emitter]:
    """Events stay queued: the registry it waits for is unreachable."""
    port = _dead_port()
    config = EmitterConfig(
        bootstrap_servers=f"127.0.0.1:{port}",
        registry_url=f"http://127.0.0.1:{port}",
        queue_size=5,
        close_timeout_seconds=0.5,
        delivery_timeout_seconds=1,
    )
    emitter = Emitter(config, DEPLOYMENT)
    yield emitter
    emitter.close(0.5)


def test_lifecycle_calls_reject_bad_arguments_naming_the_field(stalled_emitter: Emitter) -> None:
    with pytest.raises(EventValueError, match=r"ModelIdentity.name: expected a non-empty name"):
        stalled_emitter.model_unloaded(ModelIdentity(name=" ", version="1"))
    with pytest.raises(EventValueError, match=r"model: expected a ModelIdentity, got str"):
        stalled_emitter.model_unloaded("wine")  # type: ignore[arg-type]
    with pytest.raises(EventValueError, match=r"ModelLoadFailed.reason: expected a string"):
        stalled_emitter.model_load_failed(MODEL, reason=42, error_kind="x")  # type: ignore[arg-type]
    with pytest.raises(EventValueError, match=r"SchemaChanged.side: expected one of"):
        stalled_emitter.schema_changed(MODEL, "BOTH", OUTPUT, previous=INPUT)
    with pytest.raises(EventValueError, match=r"loaded: expected a ModelLoaded"):
        stalled_emitter.model_loaded(MODEL, {"model_type": "sklearn"})  # type: ignore[arg-type]
    with pytest.raises(EventValueError, match=r"Runtime.replicas: expected an integer"):
        from capture.events import Runtime

        Runtime(language="python", language_version="3.11", host="h", replicas="2")  # type: ignore[arg-type]
    assert stalled_emitter.stats().enqueued == 0


def test_full_queue_drops_and_counts_without_blocking(stalled_emitter: Emitter) -> None:
    started = time.perf_counter()
    for _ in range(8):
        stalled_emitter.model_unloaded(MODEL)
    elapsed = time.perf_counter() - started
    stats = stalled_emitter.stats()
    assert stats.enqueued == 5
    assert stats.dropped == {"queue_full": 3}
    assert stats.queue_depth == 5
    # Not a timing test: a bound far above any enqueue, only to prove nothing waited on I/O.
    assert elapsed < 1.0


def test_close_counts_what_could_not_be_sent(stalled_emitter: Emitter) -> None:
    stalled_emitter.model_loaded(MODEL, model_loaded())
    recorder = stalled_emitter.scoring_recorder(MODEL, window_seconds=3600)
    recorder.record(0.01)
    stalled_emitter.close(0.5)
    stats = stalled_emitter.stats()
    # The model-loaded event and the partial stats window were both unsendable.
    assert stats.dropped.get("close_timeout") == 2
    stalled_emitter.model_unloaded(MODEL)
    assert stalled_emitter.stats().dropped["closed"] == 1


def test_schema_changed_computes_the_verdict(stalled_emitter: Emitter) -> None:
    stalled_emitter.schema_changed(MODEL, "OUTPUT", OUTPUT, previous=OUTPUT)
    _, envelope, payload = stalled_emitter._queue[0]
    assert isinstance(payload, SchemaChanged)
    assert (payload.compatibility, payload.side) == ("FULL", "OUTPUT")
    assert envelope["sequence"] == 1


def test_config_from_env_and_secrets_masked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret\n")
    config = EmitterConfig.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
            "SCHEMA_REGISTRY_URL": "http://127.0.0.1:8081/apis/ccompat/v7",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "emitter",
            "KAFKA_SASL_PASSWORD_FILE": str(secret_file),
            "SERVEMETA_QUEUE_SIZE": "50",
        }
    )
    assert config.queue_size == 50
    assert config.producer_config()["sasl.password"] == "s3cret"
    assert config.producer_config()["enable.idempotence"] is True
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "KAFKA_BOOTSTRAP_SERVERS"),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "h:1", "SERVEMETA_QUEUE_SIZE": "lots"},
            "SERVEMETA_QUEUE_SIZE",
        ),
        ({"KAFKA_BOOTSTRAP_SERVERS": "h:1", "KAFKA_SECURITY_PROTOCOL": "TLS"}, "one of"),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "h:1", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "h:1", "KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"},
            "cannot be read",
        ),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EmitterConfig.from_env(env)


def test_security_default_is_plaintext() -> None:
    assert KafkaSecurity().librdkafka() == {"security.protocol": "PLAINTEXT"}
    assert isinstance(model_loaded(), ModelLoaded)


def test_drops_are_visible_as_prometheus_metrics(stalled_emitter: Emitter) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from capture.metrics import register

    registry = CollectorRegistry()
    register(stalled_emitter, registry)
    for _ in range(7):
        stalled_emitter.model_unloaded(MODEL)
    text = generate_latest(registry).decode()
    topic = stalled_emitter.config.topic
    assert f'servemeta_emitter_dropped_total{{reason="queue_full",topic="{topic}"}} 2.0' in text
    assert f'servemeta_emitter_enqueued_total{{topic="{topic}"}} 5.0' in text
    assert f'servemeta_emitter_queue_depth{{topic="{topic}"}} 5.0' in text
