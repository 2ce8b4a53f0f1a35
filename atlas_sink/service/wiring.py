"""Start-up wiring: the target, the decoder and the pipelines a configuration asks for. The
CLI, the benchmarks and the tests build a sink through these functions alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from atlas_sink.core.pipeline import Pipeline
from atlas_sink.core.target import Target
from atlas_sink.runtime.config import SinkConfig

if TYPE_CHECKING:
    from atlas_sink.atlas.client import AtlasClient
    from atlas_sink.catalog.reader import CatalogReader


def build_target(config: SinkConfig) -> Target:
    if config.target == "local":
        from atlas_sink.targets.local import LocalCatalog

        return LocalCatalog(config.catalog_path)
    from atlas_sink.targets.atlas_rest import AtlasRestTarget

    client = atlas_client(config)
    if config.target == "atlas-rest":
        assert client is not None  # the config requires ATLAS_URL for this target
        return AtlasRestTarget(client)
    from atlas_sink.targets.atlas_hook import AtlasHookTarget

    # With ATLAS_URL as well, the hook target reads entity state and registers types over
    # REST; without it, it only writes.
    return AtlasHookTarget(
        config.require_kafka(),
        topic=config.atlas_hook_topic,
        user=config.atlas_user,
        config=config.kafka_security.librdkafka(),
        client=client,
    )


def atlas_client(config: SinkConfig) -> AtlasClient | None:
    """The Atlas client of ATLAS_URL, or None without one. The credentials come from the
    validated configuration alone: no target or client reads the environment."""
    if not config.atlas_url:
        return None
    from atlas_sink.atlas.client import AtlasClient

    user, password = config.atlas_user, config.atlas_password
    auth = (user, password.get_secret_value()) if user and password else None
    return AtlasClient(config.atlas_url, auth, backoff_max=config.retry_max_seconds)


def pipeline_factory(config: SinkConfig, target: Target) -> Callable[[], Pipeline]:
    """Pipelines with fresh caches around one target and one decoder (the decoder's
    schema caches stay valid across rebalances; the pipeline's entity caches do not)."""
    from atlas_sink.core.decode import Decoder
    from atlas_sink.core.pipeline import Pipeline
    from atlas_sink.core.validate import Limits

    registry = None
    if config.registry_url:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        conf = {"url": config.registry_url}
        if config.registry_auth is not None:
            conf["basic.auth.user.info"] = config.registry_auth.get_secret_value()
        registry = SchemaRegistryClient(conf)
    decoder = Decoder(registry, tuple(config.topics))
    limits = Limits(max_message_bytes=config.max_message_bytes)
    rules = config.rules()
    return lambda: Pipeline(target, decoder, rules, limits)


def build_pipeline(config: SinkConfig, target: Target) -> Pipeline:
    return pipeline_factory(config, target)()


class ReaderUnavailable(Exception):
    """The configured target cannot be read back (the hook target only writes)."""


def build_reader(config: SinkConfig) -> tuple[CatalogReader, Callable[[], None]]:
    """The catalog the configuration names, to read (report, lineage), and how to close it."""
    if config.target == "local":
        from atlas_sink.targets.local import LocalCatalog

        # Reading must not create: an empty new file would answer "no such model" about a
        # catalog that is simply elsewhere.
        if not config.catalog_path.is_file():
            raise ReaderUnavailable(
                f"no catalog at {config.catalog_path}: expected the SQLite file the sink "
                "writes (SINK_CATALOG_PATH, or --catalog PATH); point at it, or run the sink "
                "or `atlas-sink replay --from-beginning` first"
            )
        catalog = LocalCatalog(config.catalog_path)
        return catalog, catalog.close
    client = atlas_client(config) if config.target == "atlas-rest" else None
    if client is None:
        raise ReaderUnavailable(
            "the atlas-hook target only writes (to Kafka): read the catalog with --target "
            "atlas-rest (ATLAS_URL) or --target local --catalog PATH"
        )
    from atlas_sink.catalog.atlas_reader import AtlasCatalog

    return AtlasCatalog(client), client.close
