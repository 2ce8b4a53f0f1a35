"""Security: a second local Kafka with SASL_SSL (SCRAM-SHA-512 over TLS, certificates made
here), the emitter and the sink connecting with credentials from the environment and files,
wrong credentials and plaintext refused, no secret in any output; Atlas refusing credentials.

The broker keeps a PLAINTEXT listener and its controller on loopback (inter-broker traffic and
this test's topic set-up); clients of the project only ever get the SASL_SSL address.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from atlas_sink.runtime import exit_codes
from atlas_sink.runtime.exit_codes import EXIT_KAFKA, EXIT_TARGET_AUTH
from atlas_sink.service import cli
from capture.config import EmitterConfig
from capture.emitter import Emitter
from capture.events import Deployment, ModelIdentity
from local_services import harness
from tests import services
from tests.conftest import model_loaded
from tests.services import SinkProcess

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
DEADLINE = 30.0
DEPLOYMENT = Deployment(server_kind="python", server_name="secure-scorer", cluster="sec")
MODEL = ModelIdentity(name="wine", version="1")


# -- certificates and the SASL_SSL broker ---------------------------------------------------------


def make_certificates(directory: Path) -> tuple[Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost: (ca.pem, the
    server's PEM keystore: PKCS#8 key then certificate chain)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "servemeta test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    # Unencrypted PKCS#8: Java 17 cannot read the PBES2-encrypted form (and Kafka's PEM
    # keystore wants PKCS#8); the file is the test's own, mode 0600.
    keystore = directory / "server-keystore.pem"
    keystore.touch(mode=0o600)
    keystore.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + server.public_bytes(pem)
        + ca.public_bytes(pem)
    )
    return ca_file, keystore


@dataclass(frozen=True)
class SecureKafka:
    plaintext: str  # the broker's own loopback listener, for this test's set-up only
    sasl_ssl: str
    ca: Path
    users: dict[str, str]  # SCRAM user -> password
    password_file: Path  # the sink user's password, as *_FILE reads it

    def env(self, user: str, password: str | None = None, **extra: str) -> dict[str, str]:
        values = {
            "KAFKA_BOOTSTRAP_SERVERS": self.sasl_ssl,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": user,
            "KAFKA_SSL_CA_LOCATION": str(self.ca),
            **extra,
        }
        if password is None:
            values["KAFKA_SASL_PASSWORD_FILE"] = str(self.password_file)
        else:
            values["KAFKA_SASL_PASSWORD"] = password
        return values

    def client(self, user: str, password: str) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.sasl_ssl,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": str(self.ca),
        }

    @property
    def secrets(self) -> list[str]:
        return list(self.users.values())


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    if not shutil.which("java"):
        pytest.skip("no java: the local Kafka broker needs a JDK 17+")
    from local_services import kafka as local_kafka
    from local_services.process import free_port

    directory = tmp_path_factory.mktemp("sasl-ssl")
    ca, keystore = make_certificates(directory)
    # Hex passwords: StorageTool's --add-scram syntax takes no commas or brackets in values.
    users = {"emitter": secrets.token_hex(16), "sink": secrets.token_hex(16)}
    password_file = directory / "sink-password"
    password_file.touch(mode=0o600)
    password_file.write_text(users["sink"] + "\n")
    port = free_port()
    controller = free_port(exclude={port})
    secure = free_port(exclude={port, controller})
    listeners = (
        f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller},"
        f"SASL_SSL://{LOOPBACK}:{secure}"
    )
    overlay = {
        "listeners": listeners,
        "advertised.listeners": listeners,
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL"
        ),
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(keystore),
    }
    # SCRAM credentials live in the KRaft metadata log, written when the storage is formatted.
    scram = [
        arg
        for user, password in users.items()
        for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")
    ]
    state = directory / "state"
    started = local_kafka.start(
        state, overlay=overlay, port=port, controller_port=controller, format_args=scram
    )
    try:
        yield SecureKafka(
            plaintext=started.address,
            sasl_ssl=f"{LOOPBACK}:{secure}",
            ca=ca,
            users=users,
            password_file=password_file,
        )
    finally:
        local_kafka.stop(state)


def _topics(kafka: SecureKafka) -> tuple[str, str]:
    topic = f"secure.{uuid.uuid4().hex[:10]}"
    # Over the broker's own plaintext listener: the set-up is not what is under test.
    harness.create_topics(kafka.plaintext, [topic, f"{topic}.dlq"], partitions=1)
    return topic, f"{topic}.dlq"


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return str(answer.read().decode())
    except (urllib.error.URLError, OSError):
        return ""


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in self.records)


@pytest.fixture
def emitter_logs() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("servemeta")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _no_secret(where: str, text: str, secret_values: list[str]) -> None:
    for secret in secret_values:
        assert secret not in text, f"a password appears in {where}"


# -- tests ----------------------------------------------------------------------------------------


def test_emitter_and_sink_connect_with_credentials_and_leak_none(
    secure_kafka: SecureKafka, tmp_path: Path, emitter_logs: _Records
) -> None:
    topic, dlq = _topics(secure_kafka)
    # The emitter: settings and password from the environment, as a model server sets them.
    emitter_env = secure_kafka.env("emitter", secure_kafka.users["emitter"], SERVEMETA_TOPIC=topic)
    config = EmitterConfig.from_env(emitter_env)
    assert config.security.protocol == "SASL_SSL"
    _no_secret("the emitter config's repr", repr(config), secure_kafka.secrets)
    with Emitter(config, DEPLOYMENT) as emitter:
        emitter.model_loaded(MODEL, model_loaded())
        emitter.model_unloaded(MODEL, reason="rolled back")
        assert emitter.flush(DEADLINE)
    assert emitter.stats().delivered == 2
    assert emitter.stats().dropped == {}
    # A poison message, so that the DLQ has a record whose headers can be searched.
    producer = Producer(secure_kafka.client("emitter", secure_kafka.users["emitter"]))
    producer.produce(topic, value=b"\x7fnot an event", key=b"poison")
    assert producer.flush(DEADLINE) == 0

    catalog = tmp_path / "catalog.sqlite"
    sink_env = secure_kafka.env(
        "sink",  # its password from KAFKA_SASL_PASSWORD_FILE
        **harness.sink_environment(
            secure_kafka.sasl_ssl,
            topic,
            group=f"secure-{uuid.uuid4().hex[:8]}",
            dlq_topic=dlq,
            catalog=catalog,
            base={},
            settings={"SINK_BATCH_MAX_WAIT_SECONDS": "0.3"},
        ),
    )
    sink = SinkProcess(sink_env)
    try:
        deadline = time.monotonic() + DEADLINE
        url = sink.metrics_url(DEADLINE)
        sink.wait_for(
            "three committed messages",
            lambda: (
                _metric(_get(f"{url}/metrics"), "servemeta_sink_commits_total") >= 1
                and _metric(_get(f"{url}/metrics"), "servemeta_sink_messages_consumed_total") >= 3
            ),
            deadline - time.monotonic(),
        )
        metrics = _get(f"{url}/metrics")
    finally:
        code = sink.stop()
    logged = sink.rest()
    assert code == exit_codes.EXIT_OK, logged
    assert 'servemeta_sink_dead_letters_total{reason="framing"} 1.0' in metrics
    from atlas_sink.core.translate import MODEL_VERSION
    from atlas_sink.targets.local import LocalCatalog

    with LocalCatalog(catalog) as stored:
        version = stored.entity(MODEL_VERSION, "wine.1@sec")
        assert version is not None and version.attributes["status"] == "UNLOADED"

    # The dead letter, read back over SASL_SSL: headers name the failure, not the credentials.
    reader = Consumer(
        {
            **secure_kafka.client("sink", secure_kafka.users["sink"]),
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    reader.subscribe([dlq])
    letter = None
    deadline = time.monotonic() + DEADLINE
    try:
        while letter is None and time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is not None and msg.error() is None:
                letter = msg
    finally:
        reader.close()
    assert letter is not None and letter.value() == b"\x7fnot an event"
    headers = dict(letter.headers() or [])
    assert headers["servemeta.dlq.reason"] == b"framing"
    header_text = " ".join(f"{k}={v!r}" for k, v in headers.items())

    # `atlas-sink config` masks the password read from the file.
    shown = subprocess.run(
        [sys.executable, "-m", "atlas_sink", "config"],
        cwd=services.REPO,
        env={**harness.child_environment(), **sink_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "kafka_security.sasl_password" in shown.stdout and "********" in shown.stdout

    for where, text in (
        ("the sink's stderr", logged),
        ("/metrics", metrics),
        ("DLQ headers", header_text),
        ("atlas-sink config", shown.stdout + shown.stderr),
        ("the emitter's log records", emitter_logs.text()),
    ):
        _no_secret(where, text, secure_kafka.secrets)


def test_wrong_credentials_stop_the_sink_at_once_without_a_retry_storm(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    topic, dlq = _topics(secure_kafka)
    wrong = "wrong-" + secrets.token_hex(8)
    env = secure_kafka.env(
        "sink",
        wrong,
        **harness.sink_environment(
            secure_kafka.sasl_ssl,
            topic,
            group=f"secure-{uuid.uuid4().hex[:8]}",
            dlq_topic=dlq,
            catalog=tmp_path / "catalog.sqlite",
            base={},
        ),
    )
    sink = SinkProcess(env)
    try:
        code = sink.proc.wait(timeout=DEADLINE)
    finally:
        sink.stop()
    elapsed = time.monotonic() - sink.started
    logged = sink.rest()
    assert code == EXIT_KAFKA, logged
    assert elapsed < 15, f"took {elapsed:.1f} s"
    entries = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    [final] = [e for e in entries if "exit_code" in e]
    assert final["level"] == "ERROR" and final["exit_code"] == EXIT_KAFKA
    assert "Kafka refused the sink: _AUTHENTICATION" in final["msg"]
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in final["msg"]
    # One refused attempt or two per client (consumer, DLQ producer), not one every 300 ms.
    refusals = [e for e in entries if "Authentication failed" in e["msg"]]
    assert 1 <= len(refusals) <= 6, [e["msg"][:120] for e in refusals]
    assert len(entries) <= 20
    _no_secret("the sink's stderr", logged, [wrong, *secure_kafka.secrets])


def test_wrong_credentials_in_the_emitter_are_reported_once_and_never_block(
    secure_kafka: SecureKafka, emitter_logs: _Records
) -> None:
    topic, _ = _topics(secure_kafka)
    wrong = "wrong-" + secrets.token_hex(8)
    env = secure_kafka.env("emitter", wrong, SERVEMETA_TOPIC=topic)
    config = EmitterConfig.from_env(env, delivery_timeout_seconds=4.0)
    emitter = Emitter(config, DEPLOYMENT)
    try:
        started = time.monotonic()
        emitter.model_unloaded(MODEL)
        assert time.monotonic() - started < 0.05  # the serving path does not wait for Kafka
        # flush() returns once the event is given up (delivery timeout): about 4 s of retries.
        emitter.flush(DEADLINE)
        stats = emitter.stats()
    finally:
        emitter.close(timeout=1.0)
    assert stats.delivered == 0
    assert stats.dropped == {"delivery:_MSG_TIMED_OUT": 1}
    refusals = [r for r in emitter_logs.records if "Authentication failed" in r.getMessage()]
    # librdkafka retries several times a second; each kind of report is logged once per 30 s.
    assert 1 <= len(refusals) <= 2, [r.getMessage()[:100] for r in refusals]
    assert len(emitter_logs.records) <= 6
    _no_secret("the emitter's log records", emitter_logs.text(), [wrong])


def test_plaintext_and_tls_without_sasl_are_refused(secure_kafka: SecureKafka) -> None:
    quiet = logging.getLogger("tests.security.refused")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    for name, settings in (
        ("plaintext", {"security.protocol": "PLAINTEXT"}),
        ("TLS without SASL", {"security.protocol": "SSL", "ssl.ca.location": str(secure_kafka.ca)}),
        (
            "SASL without TLS",
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "sink",
                "sasl.password": secure_kafka.users["sink"],
            },
        ),
    ):
        conf: dict[str, Any] = {"bootstrap.servers": secure_kafka.sasl_ssl, "logger": quiet}
        admin = AdminClient({**conf, **settings})
        started = time.monotonic()
        with pytest.raises(KafkaException) as refused:
            admin.list_topics(timeout=3)
        assert time.monotonic() - started < 6, name
        assert "Failed to get metadata" in str(refused.value), name
    # The same listener with the right settings answers.
    admin = AdminClient(secure_kafka.client("sink", secure_kafka.users["sink"]))
    assert admin.list_topics(timeout=10).brokers


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of the parser and of its sub-commands, at any depth."""
    flags: set[str] = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                flags |= _flags(command)
    return flags


def test_credentials_are_never_command_line_arguments() -> None:
    flags = _flags(cli.build_parser())
    assert {"--catalog", "--target", "--reason", "--config"} <= flags  # sub-commands were walked
    for word in ("password", "secret", "token", "user", "auth", "credential", "sasl", "key"):
        assert [f for f in flags if word in f] == [], word


@pytest.mark.atlas
def test_atlas_refusing_the_credentials_stops_the_sink_instead_of_filling_the_dlq(
    kafka_bootstrap: str, atlas_url: str, tmp_path: Path
) -> None:
    """Against the real Atlas: ATLAS_URL's, else the one the project starts for the session."""
    topic = services.unique_topic("atlas-auth")
    harness.create_topics(kafka_bootstrap, [topic, f"{topic}.dlq"])
    from capture.events import ModelEvent, to_avro
    from capture.framing import single_object_framer
    from tests.conftest import envelope

    event = ModelEvent(envelope=envelope(1), payload=model_loaded())
    event.envelope.event_time = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, value=single_object_framer()(to_avro(event)))
    assert producer.flush(DEADLINE) == 0
    wrong = "wrong-" + secrets.token_hex(8)
    base = harness.sink_environment(
        kafka_bootstrap,
        topic,
        group=f"atlas-auth-{uuid.uuid4().hex[:8]}",
        dlq_topic=f"{topic}.dlq",
        atlas_url=atlas_url,
        atlas_auth=(os.environ.get("ATLAS_USERNAME") or "admin", wrong),
        base={},
        settings={"SINK_RETRY_MAX_SECONDS": "1"},
    )
    # Refused when registering the types at start, and (types skipped) when writing a batch.
    for ensure_types in ("true", "false"):
        sink = SinkProcess({**base, "SINK_ENSURE_TYPES": ensure_types})
        try:
            code = sink.proc.wait(timeout=60)
        finally:
            sink.stop()
        logged = sink.rest()
        assert code == EXIT_TARGET_AUTH, logged
        assert "refused" in logged and "401" in logged, logged[-2000:]
        assert "ATLAS_USERNAME" in logged
        _no_secret("the sink's stderr", logged, [wrong])
    # Nothing was dead-lettered for a refusal of the credentials.
    reader = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    reader.subscribe([f"{topic}.dlq"])
    at_end = False
    deadline = time.monotonic() + DEADLINE
    try:
        while not at_end and time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            assert error is not None, "a dead letter was stored"
            at_end = error.code() == KafkaError._PARTITION_EOF
    finally:
        reader.close()
    assert at_end
