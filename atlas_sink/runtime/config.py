"""Sink settings: defaults, then a YAML file, then environment variables, then command-line flags.

Everything is validated once, at start-up, into a frozen ``SinkConfig``; a bad value stops the
sink before it touches Kafka or Atlas, with a message naming the setting, the environment
variable that sets it and where the bad value came from.

The YAML file uses the setting names below as keys (``batch_max_messages: 200``); Kafka
security is one mapping, ``kafka_security``, whose keys are those of ``capture.config.
KafkaSecurity``. Secrets come from the environment (``ATLAS_PASSWORD``) or from a file
(``ATLAS_PASSWORD_FILE``, or ``atlas_password_file`` in YAML), and are never printed.

Plain pydantic rather than pydantic-settings: the variable names are shared with the emitter
and Atlas's own conventions (``KAFKA_*``, ``SCHEMA_REGISTRY_URL``, ``ATLAS_*``), secrets may
come from ``*_FILE`` and Kafka security must go through ``KafkaSecurity.from_env``; with
pydantic-settings each of those would need a custom source, so one explicit table below does
the mapping and also drives error messages and ``describe()``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from atlas_sink.core.serving_stats import StatsPolicy
from atlas_sink.core.translate import ClassificationRule, Rules
from capture.config import DEFAULT_TOPIC, ConfigError, KafkaSecurity, secret_from_env

__all__ = [
    "SETTINGS",
    "ClassificationRuleSetting",
    "ConfigError",
    "Setting",
    "SinkConfig",
    "load_config",
]

TargetKind = Literal["local", "atlas-rest", "atlas-hook"]
TARGET_KINDS: tuple[TargetKind, ...] = ("local", "atlas-rest", "atlas-hook")
CONFIG_FILE_ENV = "SINK_CONFIG_FILE"
MASK = "********"


@dataclass(frozen=True)
class Setting:
    """One setting: its name (also its YAML key), environment variable and meaning."""

    name: str
    env: str
    help: str
    secret: bool = False
    # Environment values are text; these are parsed before validation.
    parse: Literal["text", "list", "json"] = "text"
    # Older names also read, after the main one.
    aliases: tuple[str, ...] = ()


SETTINGS: tuple[Setting, ...] = (
    Setting("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "Kafka brokers, host:port[,...]"),
    Setting("topics", "SINK_TOPICS", "topics to consume, comma-separated", parse="list"),
    Setting("group_id", "SINK_GROUP_ID", "consumer group id of the live sink"),
    Setting("dlq_topic", "SINK_DLQ_TOPIC", "dead-letter topic for messages that cannot be used"),
    Setting("registry_url", "SCHEMA_REGISTRY_URL", "schema registry (Confluent API) base URL"),
    Setting(
        "registry_auth",
        "SCHEMA_REGISTRY_BASIC_AUTH",
        "registry credentials user:password (or *_FILE)",
        secret=True,
    ),
    Setting("batch_max_messages", "SINK_BATCH_MAX_MESSAGES", "messages per batch, at most"),
    Setting("batch_max_wait_seconds", "SINK_BATCH_MAX_WAIT_SECONDS", "seconds to fill a batch"),
    Setting("max_message_bytes", "SINK_MAX_MESSAGE_BYTES", "larger messages are dead-lettered"),
    Setting("target", "SINK_TARGET", "local | atlas-rest | atlas-hook"),
    Setting("catalog_path", "SINK_CATALOG_PATH", "SQLite file of the local catalog"),
    Setting("atlas_url", "ATLAS_URL", "Atlas base URL, e.g. http://atlas:21000"),
    Setting(
        "atlas_user", "ATLAS_USERNAME", "Atlas user (ATLAS_USER also read)", aliases=("ATLAS_USER",)
    ),
    Setting("atlas_password", "ATLAS_PASSWORD", "Atlas password (or *_FILE)", secret=True),
    Setting("atlas_hook_topic", "ATLAS_HOOK_TOPIC", "Atlas hook topic (target atlas-hook)"),
    Setting(
        "kafka_namespace",
        "SINK_KAFKA_NAMESPACE",
        "Atlas metadata namespace of Kafka topics, when not the deployment's cluster",
    ),
    Setting(
        "classification_rules",
        "SINK_CLASSIFICATION_RULES",
        "JSON list of {classification, dataset_pattern, field_pattern}",
        parse="json",
    ),
    Setting("rollup_seconds", "SINK_ROLLUP_SECONDS", "span of a version's live-figure rollups"),
    Setting(
        "rollup_period_seconds",
        "SINK_ROLLUP_PERIOD_SECONDS",
        "rollups older than this (before the newest window) are not kept",
    ),
    Setting(
        "drift_warn_psi",
        "SINK_DRIFT_WARN_PSI",
        "population stability index from which a feature is 'shifting'",
    ),
    Setting(
        "drift_alert_psi",
        "SINK_DRIFT_ALERT_PSI",
        "population stability index from which a feature is 'drifted'",
    ),
    Setting(
        "stale_windows",
        "SINK_STALE_WINDOWS",
        "a replica silent this many of its windows (behind its deployment's newest) is stale",
    ),
    Setting(
        "metrics_max_versions",
        "SINK_METRICS_MAX_VERSIONS",
        "at most this many (deployment, version) label sets in /metrics",
    ),
    Setting("metrics_host", "SINK_METRICS_HOST", "address of /metrics, /healthz, /readyz"),
    Setting("metrics_port", "SINK_METRICS_PORT", "port of /metrics (0: any free port)"),
    Setting(
        "shutdown_timeout_seconds",
        "SINK_SHUTDOWN_TIMEOUT_SECONDS",
        "on SIGTERM, finish or abandon the batch in hand within this time",
    ),
    Setting(
        "retry_max_seconds", "SINK_RETRY_MAX_SECONDS", "cap of the backoff while Atlas is down"
    ),
    Setting(
        "session_timeout_seconds",
        "SINK_SESSION_TIMEOUT_SECONDS",
        "a sink that died without leaving the group keeps its partitions this long",
    ),
    Setting("ensure_types", "SINK_ENSURE_TYPES", "register type definitions when `run` starts"),
    Setting("log_level", "SINK_LOG_LEVEL", "DEBUG | INFO | WARNING | ERROR"),
    Setting(
        "topic_wait_seconds",
        "SINK_TOPIC_WAIT_SECONDS",
        "`run` waits this long for its topics to exist, then exits 4",
    ),
    Setting(
        "drop_log_seconds",
        "SINK_DROP_LOG_SECONDS",
        "at most one log line per drop reason this often (metrics count every drop)",
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}

# KafkaSecurity's fields, their variables (as KafkaSecurity.from_env reads them) and secrecy.
_SECURITY_ENV = {
    "protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_ca_location": "KAFKA_SSL_CA_LOCATION",
    "ssl_certificate_location": "KAFKA_SSL_CERTIFICATE_LOCATION",
    "ssl_key_location": "KAFKA_SSL_KEY_LOCATION",
    "ssl_key_password": "KAFKA_SSL_KEY_PASSWORD",
}
_SECURITY_SECRETS = ("sasl_password", "ssl_key_password")


class ClassificationRuleSetting(BaseModel):
    """``{classification, dataset_pattern, field_pattern}``; patterns are ``re.search`` regexes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    classification: str = Field(min_length=1)
    dataset_pattern: str | None = None
    field_pattern: str | None = None

    @model_validator(mode="after")
    def _compiles(self) -> ClassificationRuleSetting:
        if self.dataset_pattern is None and self.field_pattern is None:
            raise ValueError(
                f"rule for {self.classification!r} has neither dataset_pattern nor "
                "field_pattern: give at least one"
            )
        for key in ("dataset_pattern", "field_pattern"):
            pattern = getattr(self, key)
            if pattern is None:
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"rule for {self.classification!r}: {key} {pattern!r} is not a valid "
                    f"regular expression ({exc}); fix it, or escape special characters with \\"
                ) from None
        return self

    def compiled(self) -> ClassificationRule:
        return ClassificationRule(
            classification=self.classification,
            dataset_pattern=re.compile(self.dataset_pattern) if self.dataset_pattern else None,
            field_pattern=re.compile(self.field_pattern) if self.field_pattern else None,
        )


class SinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    kafka_bootstrap_servers: str | None = None
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    topics: tuple[str, ...] = Field(default=(DEFAULT_TOPIC,), min_length=1)
    group_id: str = Field(default="servemeta-atlas-sink", min_length=1)
    dlq_topic: str = Field(default=f"{DEFAULT_TOPIC}.dlq", min_length=1)
    registry_url: str | None = None
    registry_auth: SecretStr | None = None
    # Many events per batch: they coalesce into at most one write per entity changed, so a
    # batch of 5,000 costs Atlas little more than one of 500, and the sink keeps up at rates
    # where 500 a batch fell behind (BENCHMARKS.md, Atlas freshness).
    batch_max_messages: int = Field(default=5000, gt=0, le=100_000)
    batch_max_wait_seconds: float = Field(default=0.5, gt=0, le=60)
    max_message_bytes: int = Field(default=1_000_000, gt=0)
    target: TargetKind = "local"
    catalog_path: Path = Path("servemeta-catalog.sqlite")
    atlas_url: str | None = None
    atlas_user: str | None = None
    atlas_password: SecretStr | None = None
    atlas_hook_topic: str = Field(default="ATLAS_HOOK", min_length=1)
    kafka_namespace: str | None = None
    classification_rules: tuple[ClassificationRuleSetting, ...] = ()
    rollup_seconds: int = Field(default=3600, ge=60, le=86_400)
    rollup_period_seconds: int = Field(default=48 * 3600, ge=60, le=90 * 86_400)
    drift_warn_psi: float = Field(default=0.1, gt=0)
    drift_alert_psi: float = Field(default=0.25, gt=0)
    stale_windows: float = Field(default=3.0, gt=0)
    metrics_max_versions: int = Field(default=1000, ge=0, le=100_000)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    # librdkafka's session.timeout.ms. A sink killed without leaving the group (SIGKILL, OOM,
    # a lost node) holds its partitions until this expires, its restarted self included: the
    # group waits for the dead member first. Brokers accept 6 to 1800 s unless configured
    # otherwise (group.min/max.session.timeout.ms); librdkafka heartbeats every 3 s.
    session_timeout_seconds: float = Field(default=45.0, ge=6, le=3600)
    ensure_types: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    drop_log_seconds: float = Field(default=60.0, gt=0)
    topic_wait_seconds: float = Field(default=60.0, ge=0)

    # Where each value came from (file, env, command line): shown by describe(), not a setting.
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("topics", "dlq_topic", "atlas_hook_topic")
    @classmethod
    def _topic_names(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        for topic in (value,) if isinstance(value, str) else value:
            if not _TOPIC.fullmatch(topic):
                raise ValueError(
                    f"{topic!r} is not a valid Kafka topic name: expected 1-249 letters, digits, "
                    "'.', '_' or '-'"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SinkConfig:
        if self.target == "atlas-rest" and not self.atlas_url:
            raise ValueError(
                "target atlas-rest needs ATLAS_URL (atlas_url): set it to Atlas's base URL, "
                "e.g. http://atlas:21000, or choose SINK_TARGET=local"
            )
        if self.target == "atlas-hook" and not self.kafka_bootstrap_servers:
            raise ValueError(
                "target atlas-hook writes to Kafka and needs KAFKA_BOOTSTRAP_SERVERS "
                "(kafka_bootstrap_servers)"
            )
        if bool(self.atlas_user) != bool(self.atlas_password):
            given, missing = (
                ("ATLAS_USERNAME", "ATLAS_PASSWORD (or ATLAS_PASSWORD_FILE)")
                if self.atlas_user
                else ("ATLAS_PASSWORD", "ATLAS_USERNAME")
            )
            raise ValueError(f"{given} is set but {missing} is not: set both, or neither")
        if self.drift_alert_psi < self.drift_warn_psi:
            raise ValueError(
                f"SINK_DRIFT_ALERT_PSI ({self.drift_alert_psi}) is below SINK_DRIFT_WARN_PSI "
                f"({self.drift_warn_psi}): a feature must shift before it drifts; raise the alert "
                "threshold or lower the warning one"
            )
        if self.rollup_period_seconds > 500 * self.rollup_seconds:
            raise ValueError(
                f"SINK_ROLLUP_PERIOD_SECONDS ({self.rollup_period_seconds}) keeps more than 500 "
                f"rollups of SINK_ROLLUP_SECONDS ({self.rollup_seconds}) per model version, each "
                "written with every update: lengthen the rollups or shorten the period"
            )
        if self.rollup_period_seconds < self.rollup_seconds:
            raise ValueError(
                f"SINK_ROLLUP_PERIOD_SECONDS ({self.rollup_period_seconds}) is shorter than one "
                f"rollup (SINK_ROLLUP_SECONDS, {self.rollup_seconds}): keep at least one"
            )
        if self.dlq_topic in self.topics:
            raise ValueError(
                f"SINK_DLQ_TOPIC {self.dlq_topic!r} is also in SINK_TOPICS: dead letters would "
                "be consumed again; choose a separate dead-letter topic"
            )
        return self

    # -- derived ---------------------------------------------------------------------------

    def rules(self) -> Rules:
        return Rules(
            rules=tuple(r.compiled() for r in self.classification_rules),
            kafka_namespace=self.kafka_namespace,
            stats=StatsPolicy(
                rollup_seconds=self.rollup_seconds,
                rollup_period_seconds=self.rollup_period_seconds,
                drift_warn=self.drift_warn_psi,
                drift_alert=self.drift_alert_psi,
            ),
        )

    def require_kafka(self) -> str:
        """The bootstrap servers, for the commands that need Kafka."""
        if not self.kafka_bootstrap_servers:
            raise ConfigError(
                "no Kafka broker configured: set KAFKA_BOOTSTRAP_SERVERS (host:port[,host:port]) "
                "or kafka_bootstrap_servers in the config file"
            )
        return self.kafka_bootstrap_servers

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings shared by every Kafka client of the sink."""
        return {"bootstrap.servers": self.require_kafka(), **self.kafka_security.librdkafka()}

    def secrets(self) -> list[str]:
        """Every secret value set, so that logs can scrub them wherever they appear."""
        values = [
            s.get_secret_value() for s in (self.atlas_password, self.registry_auth) if s is not None
        ]
        if self.registry_auth is not None:  # "user:password": the password may show alone
            values.append(self.registry_auth.get_secret_value().partition(":")[2])
        values += [getattr(self.kafka_security, n) for n in _SECURITY_SECRETS]
        return [v for v in values if v]

    def describe(self, sources: Mapping[str, str] | None = None) -> str:
        """Every setting, its value (secrets masked), variable and where the value came from."""
        sources = self._sources if sources is None else sources
        rows: list[tuple[str, str, str, str]] = []
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            rows.append(
                (
                    setting.name,
                    _show(value, setting.secret),
                    setting.env,
                    sources.get(setting.name, "default"),
                )
            )
            if setting.name == "kafka_bootstrap_servers":
                for key, env in _SECURITY_ENV.items():
                    shown = _show(getattr(self.kafka_security, key), key in _SECURITY_SECRETS)
                    name = f"kafka_security.{key}"
                    rows.append((name, shown, env, sources.get(name, "default")))
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(
            f"{n:<{width[0]}}  {v:<{width[1]}}  {e:<{width[2]}}  ({s})".rstrip()
            for n, v, e, s in rows
        )


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _show(value: Any, secret: bool) -> str:
    if value is None or value == ():
        return "<unset>"
    if secret or isinstance(value, SecretStr):
        return MASK
    if isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
        return json.dumps([v.model_dump(exclude_none=True) for v in value])
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_reference() -> str:
    """The settings as a Markdown table, for the documentation."""
    lines = ["| setting | variable | default | meaning |", "|---|---|---|---|"]
    defaults = SinkConfig()
    for setting in SETTINGS:
        default = _show(getattr(defaults, setting.name), setting.secret)
        if setting.name == "target":
            default = "local (atlas-rest when ATLAS_URL is set)"
        # A '|' inside a cell would end it: Markdown wants it escaped.
        cells = (setting.name, setting.env, default, setting.help)
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    for key, env in _SECURITY_ENV.items():
        default = _show(getattr(defaults.kafka_security, key), False)
        lines.append(f"| kafka_security.{key} | {env} | {default} | librdkafka security |")
    return "\n".join(lines)


# -- loading ---------------------------------------------------------------------------------


def load_config(
    env: Mapping[str, str] | None = None,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SinkConfig:
    """Defaults < YAML file (``file`` or ``$SINK_CONFIG_FILE``) < environment < ``overrides``.

    Raises ``ConfigError`` listing every problem found.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    security: dict[str, Any] = {}
    path = file or env.get(CONFIG_FILE_ENV) or None
    if path:
        _from_file(Path(path), values, security, sources)
    _from_env(env, values, security, sources)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            sources[name] = "command line"
    if "target" not in values:
        values["target"] = "atlas-rest" if values.get("atlas_url") else "local"
        sources["target"] = "derived: ATLAS_URL is set" if values.get("atlas_url") else "default"
    try:
        values["kafka_security"] = KafkaSecurity(**security)
    except ConfigError as exc:
        raise ConfigError(
            "invalid sink configuration:\n  - kafka_security (KAFKA_SECURITY_PROTOCOL, "
            f"KAFKA_SASL_*, KAFKA_SSL_*, from {_security_sources(sources)}): {exc}"
        ) from None
    try:
        config = SinkConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, values, sources)) from None
    config._sources = dict(sources)
    return config


def _from_file(
    path: Path, values: dict[str, Any], security: dict[str, Any], sources: dict[str, str]
) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"config file {str(path)!r} cannot be read ({exc.strerror}): check --config / "
            f"{CONFIG_FILE_ENV}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of setting: value, "
            f"got a {type(data).__name__}"
        )
    where = f"file {path}"
    for key, value in data.items():
        key = str(key)
        if key == "kafka_security":
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{where}: kafka_security must be a mapping with keys {sorted(_SECURITY_ENV)}"
                )
            _security_from_file(path, value, security, sources)
            continue
        secret_file = key.removesuffix("_file")
        if key.endswith("_file") and secret_file in _BY_NAME and _BY_NAME[secret_file].secret:
            values[secret_file] = _read_secret(str(value), f"{key} in {path}")
            sources[secret_file] = f"{where} ({key})"
            continue
        if key not in _BY_NAME:
            raise ConfigError(f"{where}: unknown setting {key!r}{_suggest(key, list(_BY_NAME))}")
        values[key] = value
        sources[key] = where


def _security_from_file(
    path: Path, data: dict[Any, Any], security: dict[str, Any], sources: dict[str, str]
) -> None:
    for key, value in data.items():
        key = str(key)
        field = key.removesuffix("_file")
        if key.endswith("_file") and field in _SECURITY_SECRETS:
            security[field] = _read_secret(str(value), f"kafka_security.{key} in {path}")
        elif key in _SECURITY_ENV:
            security[key] = None if value is None else str(value)
            field = key
        else:
            raise ConfigError(
                f"file {path}: unknown setting kafka_security.{key}"
                f"{_suggest(key, list(_SECURITY_ENV))}"
            )
        sources[f"kafka_security.{field}"] = f"file {path}"


def _from_env(
    env: Mapping[str, str],
    values: dict[str, Any],
    security: dict[str, Any],
    sources: dict[str, str],
) -> None:
    for setting in SETTINGS:
        raw = secret_from_env(env, setting.env) if setting.secret else env.get(setting.env) or None
        where = "env"
        for alias in setting.aliases:
            if raw is None and env.get(alias):
                raw, where = env[alias], f"env {alias}"
        if raw is None:
            continue
        if setting.parse == "list":
            values[setting.name] = [t.strip() for t in raw.split(",") if t.strip()]
        elif setting.parse == "json":
            try:
                values[setting.name] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{setting.env} ({setting.name}) must be JSON, e.g. "
                    '[{"classification": "PII", "field_pattern": "(?i)email"}]; '
                    f"got {raw[:80]!r}: {exc}"
                ) from None
        else:
            values[setting.name] = raw
        if setting.secret and not env.get(setting.env):
            where = f"env {setting.env}_FILE"
        sources[setting.name] = where
    # The same variables KafkaSecurity.from_env reads (a test keeps the two in step), merged
    # per key: the environment may override one key of the file's kafka_security.
    for key, var in _SECURITY_ENV.items():
        value = secret_from_env(env, var) if key in _SECURITY_SECRETS else env.get(var) or None
        if value is not None:
            security[key] = value
            sources[f"kafka_security.{key}"] = "env"


def _security_sources(sources: Mapping[str, str]) -> str:
    found = sorted({v for k, v in sources.items() if k.startswith("kafka_security.")})
    return ", ".join(found) or "default"


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{what} names {path!r}, which cannot be read ({exc.strerror}): point it at a "
            "readable file holding only the secret"
        ) from None


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (expected one of: {', '.join(sorted(choices))})"


def _explain(exc: ValidationError, values: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        name = str(loc[0]) if loc else ""
        setting = _BY_NAME.get(name)
        if setting is None:  # a check across settings: its message names them
            problems.append(error["msg"].removeprefix("Value error, "))
            continue
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
        source = sources.get(name, "default")
        label = f"{setting.env} ({name}{where}, from {source})"
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown setting {name!r}{_suggest(name, list(_BY_NAME))}")
            continue
        got = "" if setting.secret else f"; got {_brief(error.get('input', values.get(name)))}"
        problems.append(f"{label}: {msg}{got}")
    return "invalid sink configuration:\n  - " + "\n  - ".join(problems)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
