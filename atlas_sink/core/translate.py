"""Translation rules: one lifecycle event in, the entity updates it implies out. Pure.

Lineage the catalog ends up holding for a served model::

    source data sets --> <model>.<version>.training (Process) --> model version (DataSet)
    input topics + model version --> <server>.<model> deployment (Process) --> output topics

Model versions keep type, metrics, artifact location and storage facts, and their input and
output schemas; deployments keep runtime facts and status; per deployment and version a
serving stats entity keeps the latest scoring window and the live figures of every window
merged. Data sets are mapped to Atlas's own types where Atlas has them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from urllib.parse import urlsplit

from atlas_sink.core import naming
from atlas_sink.core.entities import EventKey, Ref, Served, Update
from atlas_sink.core.serving_stats import StatsContribution, StatsPolicy
from capture.dataschema import compatibility
from capture.events import (
    Compatibility,
    DataSchema,
    DataSource,
    Deployment,
    ModelEvent,
    ModelLoaded,
    ModelLoadFailed,
    ModelUnloaded,
    SchemaChanged,
    ScoringStats,
)

MODEL = "servemeta_model"
MODEL_VERSION = "servemeta_model_version"
TRAINING = "servemeta_training"
DEPLOYMENT = "servemeta_deployment"
SERVING_STATS = "servemeta_serving_stats"
DATA_SCHEMA = "servemeta_data_schema"
SCHEMA_CHANGE = "servemeta_schema_change"
DATASET = "servemeta_dataset"
KAFKA_TOPIC = "kafka_topic"
FS_PATH = "fs_path"
HDFS_PATH = "hdfs_path"
S3_OBJECT = "aws_s3_v2_object"
S3_BUCKET = "aws_s3_v2_bucket"

# Atlas's own types the translation writes or extends, each with the attributes it sets on it
# (inherited ones included), and the relationships it names. Before the sink writes to an Atlas
# it checks that Atlas has all of them (typedefs.missing_builtins): an Atlas without them would
# refuse every entity, or silently drop the attributes it does not know.
# tests/test_translate.py keeps this in step with what translate emits.
ATLAS_TYPES_WRITTEN: Mapping[str, frozenset[str]] = {
    "Asset": frozenset({"qualifiedName", "name"}),
    "DataSet": frozenset({"qualifiedName", "name", "description", "owner"}),
    "Process": frozenset({"qualifiedName", "name", "inputs", "outputs"}),
    KAFKA_TOPIC: frozenset({"qualifiedName", "name", "description", "topic", "uri"}),
    FS_PATH: frozenset({"qualifiedName", "name", "description", "path"}),
    HDFS_PATH: frozenset({"qualifiedName", "name", "description", "path", "clusterName"}),
    S3_OBJECT: frozenset({"qualifiedName", "name", "description", "bucketName", "container"}),
    S3_BUCKET: frozenset({"qualifiedName", "name"}),
}
ATLAS_RELATIONSHIPS_WRITTEN = (
    "dataset_process_inputs",
    "process_dataset_outputs",
    "aws_s3_v2_container_contained",
)

MUTABLE_TYPES = (MODEL, MODEL_VERSION, DEPLOYMENT, SERVING_STATS)
# Values of the servemeta_encryption enum (artifactEncryption).
ENCRYPTED = "ENCRYPTED_AT_REST"
NOT_ENCRYPTED = "NOT_ENCRYPTED_AT_REST"


@dataclass(frozen=True)
class ClassificationRule:
    """Classify data sets whose URI, or schemas with a field whose name, matches a pattern."""

    classification: str
    dataset_pattern: re.Pattern[str] | None = None
    field_pattern: re.Pattern[str] | None = None

    def matches_dataset(self, uri: str) -> bool:
        return self.dataset_pattern is not None and bool(self.dataset_pattern.search(uri))

    def matches_field(self, name: str) -> bool:
        return self.field_pattern is not None and bool(self.field_pattern.search(name))


@dataclass(frozen=True)
class Rules:
    rules: tuple[ClassificationRule, ...] = ()
    # Atlas metadata namespace of Kafka topics, when it is not the deployment's cluster.
    kafka_namespace: str | None = None
    # How live figures per version are kept and judged.
    stats: StatsPolicy = field(default_factory=StatsPolicy)

    def for_dataset(self, uri: str) -> list[str]:
        return [r.classification for r in self.rules if r.matches_dataset(uri)]

    def for_field(self, name: str) -> list[str]:
        return [r.classification for r in self.rules if r.matches_field(name)]


class _Context:
    """What every rule needs to know about the event being translated."""

    __slots__ = ("cluster", "event", "key", "rules")

    def __init__(self, event: ModelEvent, rules: Rules) -> None:
        env = event.envelope
        self.event = event
        self.rules = rules
        self.cluster = env.deployment.cluster
        self.key = EventKey(
            micros(env.event_time), f"{env.producer.instance_id}/{env.model.name}", env.sequence
        )

    def mutable(
        self,
        type_name: str,
        qualified_name: str,
        values: dict[str, object],
        references: dict[str, Ref | list[Ref]] | None = None,
        classifications: Iterable[str] = (),
        served: Served | None = None,
        stats: StatsContribution | None = None,
    ) -> Update:
        return Update(
            type_name,
            qualified_name,
            values,
            references or {},
            tuple(classifications),
            key=self.key,
            event_id=self.event.envelope.event_id,
            served=served,
            stats=stats,
        )


def micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def translate(event: ModelEvent, rules: Rules) -> list[Update]:
    ctx = _Context(event, rules)
    payload = event.payload
    if isinstance(payload, ModelLoaded):
        return _model_loaded(ctx, payload)
    if isinstance(payload, ModelLoadFailed):
        return _model_load_failed(ctx, payload)
    if isinstance(payload, ModelUnloaded):
        return _model_unloaded(ctx, payload)
    if isinstance(payload, SchemaChanged):
        return _schema_changed(ctx, payload)
    return _scoring_stats(ctx, payload)


# -- refs of the entities every event talks about -------------------------------------------


def _model_ref(ctx: _Context) -> Ref:
    return Ref(MODEL, naming.model(ctx.event.envelope.model.name, ctx.cluster))


def _version_ref(ctx: _Context, version: str | None = None) -> Ref:
    model = ctx.event.envelope.model
    return Ref(
        MODEL_VERSION, naming.model_version(model.name, version or model.version, ctx.cluster)
    )


def _deployment_ref(ctx: _Context) -> Ref:
    env = ctx.event.envelope
    return Ref(
        DEPLOYMENT, naming.deployment(env.deployment.server_name, env.model.name, ctx.cluster)
    )


def _deployment_identity(ctx: _Context) -> dict[str, object]:
    """Written with every deployment update, so even a first stats window makes a valid entity."""
    env = ctx.event.envelope
    return _identity_of(env.deployment, env.model.name)


@lru_cache(maxsize=4096)
def _identity_of(deployment: Deployment, model_name: str) -> dict[str, object]:
    # Cached per deployment and model: callers spread it into a new dict, never mutate it.
    return {
        "name": f"{deployment.server_name} serving {model_name}",
        "serverKind": deployment.server_kind,
        "serverName": deployment.server_name,
        "cluster": deployment.cluster,
        "environment": deployment.environment,
        "modelName": model_name,
    }


def _deployment_named(ctx: _Context) -> dict[str, object]:
    """The values its qualifiedName fixes, the same in every event about the deployment: an
    update without an event's time guard may carry these and nothing else, or an old event
    could overwrite a newer one's (a changed environment, say)."""
    identity = _deployment_identity(ctx)
    return {name: identity[name] for name in ("name", "serverName", "modelName", "cluster")}


def _deployment_update(
    ctx: _Context,
    status: str,
    reason: str | None,
    values: dict[str, object] | None = None,
    references: dict[str, Ref | list[Ref]] | None = None,
    *,
    restored: bool = False,
) -> Update:
    """A lifecycle event's word on the deployment. Its status is not set here: the coalescer
    derives it from every version's newest word (EntityState.serve). A ``restored`` load
    says the version serves, but is not a load of its own."""
    env = ctx.event.envelope
    loaded = status == "IN_SERVICE" and not restored
    return ctx.mutable(
        DEPLOYMENT,
        _deployment_ref(ctx).qualified_name,
        {**_deployment_identity(ctx), **(values or {})},
        references=references,
        served=Served(env.model.version, status, reason, loaded=loaded, resumed=restored),
    )


def _version_identity(ctx: _Context, version: str | None = None) -> dict[str, object]:
    model = ctx.event.envelope.model
    version = version or model.version
    return {"name": f"{model.name} {version}", "modelName": model.name, "version": version}


# -- data sets and schemas -------------------------------------------------------------------


def dataset_updates(uri: str, cluster: str, rules: Rules) -> tuple[Update, list[Update]]:
    """Map a URI to Atlas's own type for it, named as Atlas's hooks name it; and what must
    exist for Atlas to take that data set: an S3 object's bucket (Atlas refuses an object
    without its container, ATLAS-404-00-007)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    classifications = tuple(rules.for_dataset(uri))
    if scheme == "kafka":
        topic = parts.path.strip("/") or parts.netloc
        namespace = rules.kafka_namespace or cluster
        topic_update = Update(
            KAFKA_TOPIC,
            naming.kafka_topic(topic, namespace),
            {"name": topic, "topic": topic, "uri": uri},
            classifications=classifications,
        )
        return topic_update, []
    if scheme in ("", "file"):
        path = parts.path or uri
        path_update = Update(
            FS_PATH,
            naming.uri_dataset(uri, cluster),
            {"name": path.rsplit("/", 1)[-1] or path, "path": path},
            classifications=classifications,
        )
        return path_update, []
    if scheme == "hdfs":
        hdfs_update = Update(
            HDFS_PATH,
            naming.uri_dataset(uri, cluster),
            {"name": parts.path.rsplit("/", 1)[-1], "path": uri, "clusterName": cluster},
            classifications=classifications,
        )
        return hdfs_update, []
    if scheme in ("s3", "s3a", "s3n"):
        key = parts.path.strip("/")
        bucket = Update(
            S3_BUCKET, naming.uri_dataset(f"s3://{parts.netloc}", cluster), {"name": parts.netloc}
        )
        s3_object = Update(
            S3_OBJECT,
            naming.uri_dataset(uri, cluster),
            {"name": key.rsplit("/", 1)[-1] or parts.netloc, "bucketName": parts.netloc},
            references={"container": bucket.ref},
            classifications=classifications,
        )
        return s3_object, [bucket]
    other = Update(
        DATASET,
        naming.uri_dataset(uri, cluster),
        {"name": uri, "uri": uri, "scheme": scheme},
        classifications=classifications,
    )
    return other, []


def schema_update(
    schema: DataSchema, cluster: str, rules: Rules, describes: Ref | None = None
) -> Update:
    """A schema entity; with ``describes``, the data set's own copy (see naming.source_schema)."""
    fields = []
    classified: set[str] = set()
    for spec in schema.fields:
        names = sorted(set(spec.classifications) | set(rules.for_field(spec.name)))
        classified.update(names)
        fields.append(
            {
                "name": spec.name,
                "type": spec.type,
                "nullable": spec.nullable,
                "doc": spec.doc,
                "classifications": names,
            }
        )
    return Update(
        DATA_SCHEMA,
        naming.source_schema(schema.fingerprint, describes.qualified_name, cluster)
        if describes is not None
        else naming.data_schema(schema.fingerprint, cluster),
        {
            "name": f"schema {schema.fingerprint[7:19] or schema.fingerprint}",
            "fingerprint": schema.fingerprint,
            "fields": fields,
            "schemaText": schema.schema_text,
        },
        references={"describes": [describes]} if describes is not None else {},
        classifications=tuple(sorted(classified)),
    )


def _source_updates(ctx: _Context, sources: list[DataSource]) -> tuple[list[Update], list[Ref]]:
    updates: list[Update] = []
    refs: list[Ref] = []
    for source in sources:
        dataset, needed = dataset_updates(source.uri, ctx.cluster, ctx.rules)
        updates += needed
        if source.name:
            # Not the name: the same URI named by a topic or path elsewhere would flip it.
            dataset.values["description"] = f"training source {source.name}"
        if source.schema is None:
            updates.append(dataset)
        else:
            schema = schema_update(source.schema, ctx.cluster, ctx.rules, dataset.ref)
            # A classified field classifies the data set that holds it, so the classification
            # flows down the lineage (training, version, deployments, their outputs) as the
            # data set's own do; the schema entity is not on the lineage path.
            extra = tuple(c for c in schema.classifications if c not in dataset.classifications)
            updates += [dataset._replace(classifications=dataset.classifications + extra), schema]
        refs.append(dataset.ref)
    return updates, refs


# -- one function per payload ------------------------------------------------------------------


def _model_loaded(ctx: _Context, loaded: ModelLoaded) -> list[Update]:
    env = ctx.event.envelope
    model, version = env.model.name, env.model.version
    updates, source_refs = _source_updates(ctx, loaded.training.sources)
    input_schema = schema_update(loaded.input_schema, ctx.cluster, ctx.rules)
    output_schema = schema_update(loaded.output_schema, ctx.cluster, ctx.rules)
    updates += [input_schema, output_schema]
    version_ref = _version_ref(ctx)
    artifact = loaded.artifact
    size = artifact.size_bytes
    # A restored instance resumes a load announced before: when and what it replaced are
    # that load's, so a restore after a crash neither moves loadedAt nor loses the history.
    load: dict[str, object] = (
        {}
        if loaded.restored
        else {"replacesVersion": loaded.replaces_version, "loadedAt": ctx.key.event_time // 1000}
    )
    updates.append(
        ctx.mutable(
            MODEL_VERSION,
            version_ref.qualified_name,
            {
                **_version_identity(ctx),
                "contentHash": env.model.content_hash or artifact.content_hash,
                "framework": loaded.model_type.framework,
                "frameworkVersion": loaded.model_type.framework_version,
                "flavor": loaded.model_type.flavor,
                "algorithm": loaded.model_type.algorithm,
                "task": loaded.model_type.task,
                "artifactUri": artifact.uri,
                "artifactScheme": artifact.scheme,
                "artifactEncryption": _encryption(artifact.encrypted_at_rest),
                "accessMode": artifact.access_mode,
                # A map, absent when unreported: Atlas reads a never-written long as 0.
                "artifactSize": None if size is None else {"bytes": size},
                "trainingRunId": loaded.training.run_id,
                "trainingRunUrl": loaded.training.run_url,
                "hyperParameters": dict(loaded.training.hyper_parameters),
                "metrics": {f"{m.split}.{m.name}": m.value for m in loaded.metrics},
                "owner": loaded.owner,
                "tags": list(loaded.tags),
                "properties": dict(loaded.properties),
                "status": "LOADED",
                "statusReason": None,
                **load,
            },
            references={
                "model": _model_ref(ctx),
                "inputSchema": input_schema.ref,
                "outputSchema": output_schema.ref,
            },
            classifications=loaded.classifications,
        )
    )
    updates.append(
        ctx.mutable(
            MODEL,
            _model_ref(ctx).qualified_name,
            {"name": model, "latestVersion": version, "owner": loaded.owner},
        )
    )
    updates.append(
        Update(
            TRAINING,
            naming.training(model, version, ctx.cluster),
            {
                "name": f"training of {model} {version}",
                "runId": loaded.training.run_id,
                "runUrl": loaded.training.run_url,
                "hyperParameters": dict(loaded.training.hyper_parameters),
            },
            references={"inputs": source_refs, "outputs": [version_ref]},
        )
    )
    io_updates = []
    for uri in (*loaded.inputs, *loaded.outputs):
        dataset, needed = dataset_updates(uri, ctx.cluster, ctx.rules)
        updates += needed
        io_updates.append(dataset)
    updates += io_updates
    inputs = [u.ref for u in io_updates[: len(loaded.inputs)]]
    outputs = [u.ref for u in io_updates[len(loaded.inputs) :]]
    runtime = loaded.runtime
    updates.append(
        _deployment_update(
            ctx,
            "IN_SERVICE",
            "resumed after a restart" if loaded.restored else None,
            {
                "currentVersion": version,
                "language": runtime.language,
                "languageVersion": runtime.language_version,
                "containerImage": runtime.container_image,
                "host": runtime.host,
                "endpoint": runtime.endpoint,
                "replicas": runtime.replicas,
            },
            references={"inputs": [*inputs, version_ref], "outputs": outputs},
            restored=loaded.restored,
        )
    )
    if loaded.training_profile:
        updates.append(
            _stats_update(
                ctx,
                StatsContribution(ctx.rules.stats, training=tuple(loaded.training_profile)),
            )
        )
    if loaded.replaces_version and loaded.replaces_version != version and not loaded.restored:
        updates.append(
            ctx.mutable(
                MODEL_VERSION,
                _version_ref(ctx, loaded.replaces_version).qualified_name,
                {
                    **_version_identity(ctx, loaded.replaces_version),
                    "status": "REPLACED",
                    "statusReason": f"replaced by version {version}",
                },
                references={"model": _model_ref(ctx)},
            )
        )
    return updates


def _model_load_failed(ctx: _Context, failed: ModelLoadFailed) -> list[Update]:
    env = ctx.event.envelope
    reason = f"{failed.error_kind}: {failed.reason}"
    version_values: dict[str, object] = {
        **_version_identity(ctx),
        "status": "FAILED",
        "statusReason": reason,
    }
    if failed.artifact_uri:
        version_values["artifactUri"] = failed.artifact_uri
    return [
        ctx.mutable(
            MODEL_VERSION,
            _version_ref(ctx).qualified_name,
            version_values,
            references={"model": _model_ref(ctx)},
        ),
        ctx.mutable(MODEL, _model_ref(ctx).qualified_name, {"name": env.model.name}),
        _deployment_update(ctx, "FAILED", reason),
    ]


def _model_unloaded(ctx: _Context, unloaded: ModelUnloaded) -> list[Update]:
    return [
        ctx.mutable(
            MODEL_VERSION,
            _version_ref(ctx).qualified_name,
            {**_version_identity(ctx), "status": "UNLOADED", "statusReason": unloaded.reason},
            references={"model": _model_ref(ctx)},
        ),
        _deployment_update(ctx, "STOPPED", unloaded.reason),
    ]


def judged_compatibility(changed: SchemaChanged) -> Compatibility:
    """The sink's own verdict: a producer's claim is kept beside it, never taken for it."""
    if changed.previous_schema is None:
        return Compatibility.UNKNOWN
    return compatibility(changed.previous_schema, changed.new_schema)


def _schema_changed(ctx: _Context, changed: SchemaChanged) -> list[Update]:
    env = ctx.event.envelope
    schema = schema_update(changed.new_schema, ctx.cluster, ctx.rules)
    version_ref = _version_ref(ctx)
    side = changed.side.value.lower()
    return [
        schema,
        ctx.mutable(
            MODEL_VERSION,
            version_ref.qualified_name,
            _version_identity(ctx),
            references={f"{side}Schema": schema.ref, "model": _model_ref(ctx)},
        ),
        Update(
            SCHEMA_CHANGE,
            naming.schema_change(
                env.model.name, env.model.version, side, ctx.key.event_time, ctx.cluster
            ),
            {
                "name": f"{side} schema of {env.model.name} {env.model.version} changed",
                "side": changed.side.value,
                "previousFingerprint": changed.previous_fingerprint,
                "newFingerprint": changed.new_fingerprint,
                "compatibility": judged_compatibility(changed).value,
                "claimedCompatibility": changed.compatibility.value,
                "changedAt": ctx.key.event_time // 1000,
            },
            references={"modelVersion": version_ref, "newSchema": schema.ref},
        ),
    ]


def _encryption(encrypted: bool | None) -> str | None:
    """An enum, absent when unreported: Atlas reads a never-written boolean as false."""
    if encrypted is None:
        return None
    return ENCRYPTED if encrypted else NOT_ENCRYPTED


def _scoring_stats(ctx: _Context, stats: ScoringStats) -> list[Update]:
    latency = stats.latency
    # One struct, absent until a window is applied: Atlas keeps an unwritten struct as
    # absent, where it would read each of these numbers as 0.
    window = {
        "start": micros(stats.window_start) // 1000,
        "end": micros(stats.window_end) // 1000,
        "modelVersion": ctx.event.envelope.model.version,
        "requests": stats.request_count,
        "errors": stats.error_count,
        "errorsByKind": dict(stats.errors_by_kind),
        "latencyMinSeconds": latency.min,
        "latencyMeanSeconds": latency.mean,
        "latencyP50Seconds": latency.p50,
        "latencyP95Seconds": latency.p95,
        "latencyP99Seconds": latency.p99,
        "latencyMaxSeconds": latency.max,
    }
    producer = ctx.event.envelope.producer
    return [
        # The deployment only has to exist for the figures to refer to: its identity, written
        # once and then skipped as unchanged, not a write per window (Atlas's cost is per
        # entity written).
        Update(DEPLOYMENT, _deployment_ref(ctx).qualified_name, _deployment_named(ctx)),
        _stats_update(
            ctx,
            StatsContribution(ctx.rules.stats, producer.instance_id, producer.host, window=stats),
            {"latestWindow": window},
        ),
    ]


def _stats_update(
    ctx: _Context, contribution: StatsContribution, values: dict[str, object] | None = None
) -> Update:
    """The live figures of the event's model version on its deployment. The entity refers to
    the deployment alone: every event about the deployment names it, not every one names the
    version, and Atlas refuses a reference to an entity it does not hold."""
    env = ctx.event.envelope
    model, version = env.model.name, env.model.version
    server = env.deployment.server_name
    return ctx.mutable(
        SERVING_STATS,
        naming.serving_stats(server, model, version, ctx.cluster),
        {
            "name": f"{model} {version} on {server}",
            "modelName": model,
            "version": version,
            "serverName": server,
            **(values or {}),
        },
        references={"deployment": _deployment_ref(ctx)},
        stats=contribution,
    )
