"""Emitter configuration: from code, or from ``SERVEMETA_*``/``KAFKA_*`` environment variables.

Secrets (SASL password, TLS key password) are read from the environment or from a file named
by ``*_FILE``, never printed: ``repr`` masks them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_TOPIC = "servemeta.model-events"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class KafkaSecurity:
    """librdkafka security settings, shared by the emitter and the sink."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)

    _PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")

    def __post_init__(self) -> None:
        if self.protocol.upper() not in self._PROTOCOLS:
            raise ConfigError(
                f"Kafka security protocol must be one of {self._PROTOCOLS}, got {self.protocol!r}"
            )
        if self.protocol.upper().startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ConfigError(
                f"security protocol {self.protocol} needs a SASL mechanism, username and "
                "password: set KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD "
                "(or KAFKA_SASL_PASSWORD_FILE)"
            )

    def librdkafka(self) -> dict[str, str]:
        conf = {"security.protocol": self.protocol.upper()}
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password,
        }
        conf.update({k: v for k, v in optional.items() if v})
        return conf

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        env = os.environ if env is None else env
        return cls(
            protocol=env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            sasl_mechanism=env.get("KAFKA_SASL_MECHANISM") or None,
            sasl_username=env.get("KAFKA_SASL_USERNAME") or None,
            sasl_password=secret_from_env(env, "KAFKA_SASL_PASSWORD"),
            ssl_ca_location=env.get("KAFKA_SSL_CA_LOCATION") or None,
            ssl_certificate_location=env.get("KAFKA_SSL_CERTIFICATE_LOCATION") or None,
            ssl_key_location=env.get("KAFKA_SSL_KEY_LOCATION") or None,
            ssl_key_password=secret_from_env(env, "KAFKA_SSL_KEY_PASSWORD"),
        )


def secret_from_env(env: Mapping[str, str], name: str) -> str | None:
    """``NAME`` itself, or the contents of the file named by ``NAME_FILE``; both set is refused,
    since which one wins would be a guess."""
    path = env.get(f"{name}_FILE")
    if env.get(name) and path:
        raise ConfigError(f"both {name} and {name}_FILE are set: expected one of them; unset one")
    if env.get(name):
        return env[name]
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{name}_FILE names {path!r}, which cannot be read ({exc.strerror}): "
            "point it at a readable file holding only the secret"
        ) from None


def _positive(name: str, raw: str, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a positive {kind.__name__}, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a positive {kind.__name__}, got {raw!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class EmitterConfig:
    bootstrap_servers: str
    topic: str = DEFAULT_TOPIC
    registry_url: str | None = None
    registry_auth: str | None = field(default=None, repr=False)  # "user:password"
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    queue_size: int = 10_000
    delivery_timeout_seconds: float = 30.0
    window_seconds: float = 60.0
    tick_seconds: float = 0.2
    close_timeout_seconds: float = 5.0
    emitter_name: str = "servemeta-capture"
    producer_overrides: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    # The optional disk spool (capture/spool.py): events the broker cannot take (unreachable
    # for delivery_timeout_seconds, or librdkafka's queue full) wait here instead of being
    # dropped, and a restarted emitter with the same directory sends them first. One
    # directory per emitter; None (the default) turns it off.
    spool_dir: Path | None = None
    spool_max_bytes: int = 128 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigError("bootstrap_servers must name at least one host:port")
        if not self.topic.strip():
            raise ConfigError("topic must not be empty")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_size", "_seconds", "_bytes")) and value <= 0:
                raise ConfigError(f"{f.name} must be positive, got {value!r}")
        if self.spool_dir is not None:
            object.__setattr__(self, "spool_dir", Path(self.spool_dir))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> EmitterConfig:
        env = os.environ if env is None else env
        bootstrap = env.get("SERVEMETA_KAFKA_BOOTSTRAP_SERVERS") or env.get(
            "KAFKA_BOOTSTRAP_SERVERS"
        )
        if not bootstrap and "bootstrap_servers" not in overrides:
            raise ConfigError(
                "no Kafka broker configured: set KAFKA_BOOTSTRAP_SERVERS (host:port[,host:port])"
            )
        settings: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "topic": env.get("SERVEMETA_TOPIC", DEFAULT_TOPIC),
            "registry_url": env.get("SCHEMA_REGISTRY_URL") or None,
            "registry_auth": secret_from_env(env, "SCHEMA_REGISTRY_BASIC_AUTH"),
            "security": KafkaSecurity.from_env(env),
            "spool_dir": Path(spool) if (spool := env.get("SERVEMETA_SPOOL_DIR")) else None,
        }
        numeric = {
            "queue_size": ("SERVEMETA_QUEUE_SIZE", int),
            "delivery_timeout_seconds": ("SERVEMETA_DELIVERY_TIMEOUT_SECONDS", float),
            "window_seconds": ("SERVEMETA_WINDOW_SECONDS", float),
            "spool_max_bytes": ("SERVEMETA_SPOOL_MAX_BYTES", int),
        }
        for key, (var, kind) in numeric.items():
            if env.get(var):
                settings[key] = _positive(var, env[var], kind)
        settings.update(overrides)
        return cls(**settings)

    def producer_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.emitter_name,
            # Idempotence with acks=all: a retried send never duplicates or reorders.
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 20,
            # With the spool, librdkafka never gives up on a message (0: no timeout): after
            # delivery_timeout_seconds without progress the emitter itself moves what
            # librdkafka holds to the spool, in order. A timeout inside librdkafka could fail
            # an older message while a newer one is delivered, and the newer one's watermark
            # would then hide the older one from the sink when it is re-sent.
            "message.timeout.ms": (
                0 if self.spool_dir is not None else int(self.delivery_timeout_seconds * 1000)
            ),
            "queue.buffering.max.messages": max(self.queue_size * 2, 1000),
            # One line per connection problem, not one per retry.
            "log.connection.close": False,
        }
        conf.update(self.security.librdkafka())
        conf.update(self.producer_overrides)
        return conf
