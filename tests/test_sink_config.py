"""Sink settings without any service: defaults, environment, YAML, precedence, secrets, errors."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from atlas_sink.runtime import exit_codes, logs
from atlas_sink.runtime.config import (
    _SECURITY_ENV,
    SETTINGS,
    ConfigError,
    load_config,
    settings_reference,
)
from atlas_sink.service import cli
from capture.config import KafkaSecurity

SECRET = "s3cr3t-Pa55"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    config = load_config({})
    assert config.topics == ("servemeta.model-events",)
    assert config.dlq_topic == "servemeta.model-events.dlq"
    assert (config.batch_max_messages, config.batch_max_wait_seconds) == (5000, 0.5)
    assert config.target == "local"
    assert config.catalog_path == Path("servemeta-catalog.sqlite")
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9464)
    assert config.kafka_security == KafkaSecurity()
    assert config.rules().rules == ()


def test_environment_values_are_parsed() -> None:
    config = load_config(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "SINK_TOPICS": "a.events, b.events",
            "SINK_GROUP_ID": "g1",
            "SINK_DLQ_TOPIC": "a.dlq",
            "SINK_BATCH_MAX_MESSAGES": "50",
            "SINK_BATCH_MAX_WAIT_SECONDS": "0.25",
            "SINK_ENSURE_TYPES": "false",
            "SINK_METRICS_PORT": "0",
            "SCHEMA_REGISTRY_URL": "http://registry:8081",
        }
    )
    assert config.topics == ("a.events", "b.events")
    assert config.batch_max_messages == 50
    assert config.batch_max_wait_seconds == 0.25
    assert config.ensure_types is False
    assert config.metrics_port == 0
    assert config.kafka_client_config() == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "security.protocol": "PLAINTEXT",
    }


def test_atlas_url_makes_atlas_rest_the_default_target_unless_one_is_chosen() -> None:
    assert load_config({"ATLAS_URL": "http://atlas:21000"}).target == "atlas-rest"
    chosen = load_config({"ATLAS_URL": "http://atlas:21000", "SINK_TARGET": "local"})
    assert chosen.target == "local"
    hook = load_config({"SINK_TARGET": "atlas-hook", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert hook.target == "atlas-hook"


def test_yaml_file_then_environment_then_overrides(tmp_path: Path) -> None:
    password_file = write(tmp_path / "atlas.pw", SECRET + "\n")
    sasl_file = write(tmp_path / "sasl.pw", "sasl-secret")
    config_file = write(
        tmp_path / "sink.yaml",
        f"""
kafka_bootstrap_servers: file-broker:9092
kafka_security:
  protocol: SASL_SSL
  sasl_mechanism: SCRAM-SHA-512
  sasl_username: sink
  sasl_password_file: {sasl_file}
topics: [one.events, two.events]
batch_max_messages: 100
atlas_url: http://atlas:21000
atlas_user: admin
atlas_password_file: {password_file}
classification_rules:
  - classification: PII
    field_pattern: "(?i)^(email|phone)$"
  - classification: Confidential
    dataset_pattern: "^s3://secure/"
""",
    )
    config = load_config(
        {"SINK_BATCH_MAX_MESSAGES": "200", "KAFKA_SASL_USERNAME": "env-user"},
        file=config_file,
        overrides={"batch_max_messages": 300, "catalog_path": None},
    )
    assert config.kafka_bootstrap_servers == "file-broker:9092"
    assert config.topics == ("one.events", "two.events")
    assert config.batch_max_messages == 300  # override > env > file
    assert config.kafka_security.protocol == "SASL_SSL"
    assert config.kafka_security.sasl_username == "env-user"  # env wins, key by key
    assert config.kafka_security.sasl_password == "sasl-secret"
    assert config.atlas_password is not None
    assert config.atlas_password.get_secret_value() == SECRET
    assert config.target == "atlas-rest"
    rules = config.rules()
    assert rules.for_field("Email") == ["PII"]
    assert rules.for_field("name") == []
    assert rules.for_dataset("s3://secure/x.csv") == ["Confidential"]


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    config_file = write(tmp_path / "sink.yaml", "group_id: from-file\n")
    assert load_config({"SINK_CONFIG_FILE": str(config_file)}).group_id == "from-file"


def test_secrets_never_printed(tmp_path: Path) -> None:
    config = load_config(
        {
            "ATLAS_URL": "http://atlas:21000",
            "ATLAS_USERNAME": "admin",
            "ATLAS_PASSWORD": SECRET,
            "SCHEMA_REGISTRY_BASIC_AUTH": f"user:{SECRET}-r",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "sink",
            "KAFKA_SASL_PASSWORD": f"{SECRET}-k",
        }
    )
    described = config.describe()
    for text in (described, repr(config), str(config)):
        assert SECRET not in text
    lines = {line.split()[0]: line for line in described.splitlines()}
    assert "********" in lines["atlas_password"]
    assert "********" in lines["kafka_security.sasl_password"]
    assert "ATLAS_PASSWORD" in lines["atlas_password"]
    assert "http://atlas:21000" in lines["atlas_url"]
    # Every setting is described, with its variable.
    for setting in SETTINGS:
        assert setting.env in lines[setting.name]
    assert set(config.secrets()) == {SECRET, f"user:{SECRET}-r", f"{SECRET}-r", f"{SECRET}-k"}


def test_secret_is_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"ATLAS_PASSWORD": SECRET})
    assert SECRET not in str(caught.value)
    assert "ATLAS_USERNAME" in str(caught.value)


def test_json_logs_mask_secrets_and_carry_extras() -> None:
    stream = io.StringIO()
    logs.configure("INFO", secrets=[SECRET], stream=stream)
    try:
        logger = logging.getLogger("servemeta.test")
        logger.info(
            "connecting to http://admin:%s@atlas", SECRET, extra={"topic": "t", "password": "x"}
        )
    finally:
        logs.unconfigure()
    entry = json.loads(stream.getvalue())
    assert SECRET not in stream.getvalue()
    assert entry["msg"] == "connecting to http://admin:********@atlas"
    assert entry["topic"] == "t"
    assert entry["password"] == "********"
    assert {"ts", "level", "logger", "msg"} <= entry.keys()
    assert (entry["level"], entry["logger"]) == ("INFO", "servemeta.test")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SINK_BATCH_MAX_MESSAGES": "lots"}, r"SINK_BATCH_MAX_MESSAGES \(batch_max_messages"),
        ({"SINK_BATCH_MAX_MESSAGES": "0"}, r"SINK_BATCH_MAX_MESSAGES .*greater than 0.*got '0'"),
        ({"SINK_BATCH_MAX_WAIT_SECONDS": "-1"}, r"SINK_BATCH_MAX_WAIT_SECONDS"),
        ({"SINK_METRICS_PORT": "70000"}, r"SINK_METRICS_PORT"),
        ({"SINK_TARGET": "atlas"}, r"SINK_TARGET .*'local', 'atlas-rest' or 'atlas-hook'"),
        ({"SINK_TARGET": "atlas-rest"}, r"needs ATLAS_URL"),
        ({"SINK_TARGET": "atlas-hook"}, r"needs KAFKA_BOOTSTRAP_SERVERS"),
        ({"SINK_TOPICS": "ok,not ok"}, r"SINK_TOPICS .*'not ok' is not a valid Kafka topic"),
        ({"SINK_DLQ_TOPIC": "servemeta.model-events"}, r"SINK_DLQ_TOPIC .* also in SINK_TOPICS"),
        ({"ATLAS_USERNAME": "admin"}, r"ATLAS_PASSWORD \(or ATLAS_PASSWORD_FILE\) is not"),
        ({"ATLAS_PASSWORD_FILE": "/nonexistent/pw"}, r"ATLAS_PASSWORD_FILE names '/nonexistent"),
        # Both given: which wins would be a guess (the REST target's own reading of the
        # environment, gone now, refused this too; the config's silently took the variable).
        (
            {"ATLAS_USERNAME": "a", "ATLAS_PASSWORD": "p", "ATLAS_PASSWORD_FILE": "/x"},
            r"both ATLAS_PASSWORD and ATLAS_PASSWORD_FILE are set",
        ),
        ({"SINK_LOG_LEVEL": "LOUD"}, r"SINK_LOG_LEVEL"),
        ({"SINK_CLASSIFICATION_RULES": "[{"}, r"SINK_CLASSIFICATION_RULES .* must be JSON"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            r"kafka_security \(KAFKA_SECURITY_PROTOCOL.*KAFKA_SASL_PASSWORD",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, r"KAFKA_SECURITY_PROTOCOL.*got 'TLS'"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(env)


def test_bad_regex_names_the_rule_and_its_classification() -> None:
    rules = json.dumps(
        [
            {"classification": "PII", "field_pattern": "email"},
            {"classification": "Secret", "dataset_pattern": "s3://(unclosed"},
        ]
    )
    with pytest.raises(ConfigError) as caught:
        load_config({"SINK_CLASSIFICATION_RULES": rules})
    message = str(caught.value)
    assert "SINK_CLASSIFICATION_RULES (classification_rules[1]" in message
    assert "rule for 'Secret': dataset_pattern 's3://(unclosed' is not a valid regular" in message


def test_rule_without_pattern_is_refused() -> None:
    with pytest.raises(ConfigError, match="rule for 'PII' has neither dataset_pattern nor"):
        load_config({"SINK_CLASSIFICATION_RULES": '[{"classification": "PII"}]'})


def test_yaml_errors_name_the_file_and_key(tmp_path: Path) -> None:
    typo = write(tmp_path / "typo.yaml", "batch_max_mesages: 10\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown setting 'batch_max_mesages'; did"):
        load_config({}, file=typo)
    bad_value = write(tmp_path / "bad.yaml", "batch_max_messages: many\n")
    with pytest.raises(ConfigError, match=r"SINK_BATCH_MAX_MESSAGES .*from file .*bad.yaml"):
        load_config({}, file=bad_value)
    not_mapping = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of setting: value, got a list"):
        load_config({}, file=not_mapping)
    broken = write(tmp_path / "broken.yaml", "topics: [a\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml' is not valid YAML"):
        load_config({}, file=broken)
    with pytest.raises(ConfigError, match=r"config file .*missing.yaml' cannot be read"):
        load_config({}, file=tmp_path / "missing.yaml")
    security = write(tmp_path / "sec.yaml", "kafka_security:\n  protocol: SSL\n  sasl_pw: x\n")
    with pytest.raises(ConfigError, match=r"unknown setting kafka_security.sasl_pw"):
        load_config({}, file=security)


def test_security_variables_are_those_kafka_security_reads() -> None:
    """The sink merges KafkaSecurity's variables key by key; the names must stay in step."""
    env = {var: f"value-of-{key}" for key, var in _SECURITY_ENV.items()}
    env["KAFKA_SECURITY_PROTOCOL"] = "SASL_SSL"
    from_capture = KafkaSecurity.from_env(env)
    from_sink = load_config(env).kafka_security
    assert from_sink == from_capture
    assert from_capture.sasl_password == "value-of-sasl_password"


def test_settings_reference_lists_every_variable() -> None:
    table = settings_reference()
    for setting in SETTINGS:
        assert f"| {setting.name} | {setting.env} |" in table
    for var in _SECURITY_ENV.values():
        assert var in table


def test_session_timeout_reaches_the_consumer_and_is_bounded() -> None:
    from atlas_sink.kafka.client import consumer_config

    config = load_config({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert consumer_config(config, "g")["session.timeout.ms"] == 45_000  # librdkafka's own
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "SINK_SESSION_TIMEOUT_SECONDS": "6"}
    assert consumer_config(load_config(env), "g")["session.timeout.ms"] == 6_000
    with pytest.raises(ConfigError, match="SINK_SESSION_TIMEOUT_SECONDS"):
        load_config({**env, "SINK_SESSION_TIMEOUT_SECONDS": "2"})


def test_require_kafka_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="set KAFKA_BOOTSTRAP_SERVERS"):
        load_config({}).require_kafka()


def test_cli_bad_config_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SINK_BATCH_MAX_MESSAGES", "0")
    assert cli.main(["config"]) == exit_codes.EXIT_USAGE
    assert "SINK_BATCH_MAX_MESSAGES" in capsys.readouterr().err


def test_cli_run_without_broker_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("SINK_CONFIG_FILE", raising=False)
    assert cli.main(["run"]) == exit_codes.EXIT_USAGE
    assert "set KAFKA_BOOTSTRAP_SERVERS" in capsys.readouterr().err
    logs.unconfigure()


def test_cli_config_prints_masked_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATLAS_URL", "http://atlas:21000")
    monkeypatch.setenv("ATLAS_USERNAME", "admin")
    monkeypatch.setenv("ATLAS_PASSWORD", SECRET)
    assert cli.main(["config"]) == exit_codes.EXIT_OK
    out = capsys.readouterr().out
    assert "atlas-rest" in out
    assert SECRET not in out
    logs.unconfigure()


@pytest.mark.parametrize(
    "argv",
    [[], ["run"], ["replay"], ["init-types"], ["lineage"], ["dlq"], ["dlq", "list"],
     ["dlq", "redrive"], ["config"]],
)  # fmt: skip
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    assert "usage: atlas-sink" in capsys.readouterr().out


def test_replay_needs_a_starting_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["replay"])
    assert done.value.code == 2
    assert "one of the arguments --from-beginning --from-time is required" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        cli.main(["replay", "--from-time", "yesterday"])
    assert "expected an ISO 8601 time" in capsys.readouterr().err


def test_log_throttle_keeps_one_line_per_kind_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = logs.Throttle(30.0, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("kafka", logging.WARNING, "", 0, msg, None, None)

    assert throttle.filter(record("connect to 127.0.0.1:9092 failed after 0ms"))
    assert not throttle.filter(record("connect to 127.0.0.1:9092 failed after 51ms"))
    assert throttle.filter(record("all brokers down"))  # another kind
    now[0] = 31.0
    again = record("connect to 127.0.0.1:9092 failed after 7ms")
    assert throttle.filter(again)
    assert again.__dict__["suppressed"] == 1
