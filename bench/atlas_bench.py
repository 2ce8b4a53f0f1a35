"""Atlas figures: how fast the sink's entities reach the real local Atlas over REST and over
the hook topic, against Atlas's own bulk upsert of the same entity JSON in the same run.

The entities are the sink's own: ModelLoaded events for each deployment, translated by the
real pipeline. Each path writes to clusters of its own, so no path updates what another made.
Then live freshness: the whole sink at a steady rate of scoring windows (bench/atlas_freshness).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Figure, kafka_bootstrap
from capture.dataschema import data_schema
from capture.events import (
    Artifact,
    DataSource,
    Deployment,
    Envelope,
    FieldSpec,
    ModelEvent,
    ModelIdentity,
    ModelLoaded,
    ModelType,
    Producer,
    Runtime,
    Training,
    to_avro,
)
from capture.framing import single_object_framer

SIZES = (20, 100)
# (target, events/s, freshness target in s or None for a point of the curve) of the live
# runs, each over every size; FRESH_SECONDS of load each.
LIVE = (
    ("atlas-rest", 1000.0, 2.0),
    ("atlas-rest", 2000.0, None),
    ("atlas-hook", 200.0, 5.0),
    ("atlas-hook", 1000.0, None),
)
FRESH_SECONDS = 30.0
_SCHEMA = data_schema([FieldSpec(name="x", type="double"), FieldSpec(name="y", type="double")])
_OUT = data_schema([FieldSpec(name="score", type="double")])


class _Collect:
    """A target that keeps what the pipeline would write."""

    name = "collect"

    def __init__(self) -> None:
        self.entities: list[Any] = []

    def ensure_types(self) -> None:
        return None

    def fetch(self, refs: Sequence[Any], attribute_names: Sequence[str]) -> dict[Any, Any]:
        return {}

    def write(self, entities: Sequence[Any]) -> Any:
        from atlas_sink.core.target import WriteResult

        self.entities.extend(entities)
        return WriteResult(written=len(entities), requests=1)

    def close(self) -> None:
        return None


def _entities(cluster: str, deployments: int) -> list[Any]:
    """What the sink writes for one ModelLoaded per deployment (one model each)."""
    from atlas_sink.core.decode import Decoder
    from atlas_sink.core.pipeline import Pipeline, RawMessage
    from atlas_sink.core.translate import Rules

    frame = single_object_framer()
    messages = []
    for n in range(deployments):
        loaded = ModelLoaded(
            model_type=ModelType(framework="sklearn", algorithm="Ridge"),
            artifact=Artifact(uri=f"s3://models/m{n}/1/model.pkl", scheme="s3", size_bytes=1000),
            training=Training(
                sources=[DataSource(uri=f"s3://data/m{n}.csv", name=f"m{n}", schema=_SCHEMA)]
            ),
            input_schema=_SCHEMA,
            output_schema=_OUT,
            runtime=Runtime(language="python", language_version="3.11", host="bench"),
            inputs=[f"kafka://m{n}-requests"],
            outputs=[f"kafka://m{n}-scores"],
        )
        envelope = Envelope(
            event_id=str(uuid.uuid4()),
            event_time=datetime.now(UTC),
            producer=Producer(
                emitter_name="bench", emitter_version="0", host="bench", pid=1, instance_id=f"i{n}"
            ),
            sequence=1,
            deployment=Deployment(server_kind="python", server_name=f"s{n}", cluster=cluster),
            model=ModelIdentity(name=f"m{n}", version="1"),
        )
        value = frame(to_avro(ModelEvent(envelope=envelope, payload=loaded)))
        messages.append(RawMessage("bench", 0, n, value))
    target = _Collect()
    outcome = Pipeline(target, Decoder(), Rules()).process(messages)
    if outcome.dead:
        raise RuntimeError(f"the benchmark's events were refused: {outcome.dead[0]}")
    return target.entities


def _live_figures(cluster: str, deployments: int, hours: int) -> list[Any]:
    """Each deployment's version figures after ``hours`` of windows (one an hour from each of
    3 replicas, with 13 input features): what the sink writes for a version in steady state,
    its hourly rollups full. Through translate and coalesce, as the pipeline makes them."""
    import random
    from datetime import timedelta

    from atlas_sink.core.coalesce import coalesce
    from atlas_sink.core.entities import EntityState
    from atlas_sink.core.translate import SERVING_STATS, Rules, translate
    from bench.common import realistic_scoring_stats
    from capture.profile import profile_features

    rng = random.Random(5)
    base = realistic_scoring_stats()
    first = datetime.now(UTC) - timedelta(hours=hours + 1)
    features = profile_features(
        {f"f{k}": [rng.gauss(k, 1.0) for _ in range(200)] for k in range(13)}
    )
    out = []
    for n in range(deployments):
        events = []
        for replica in range(3):
            for hour in range(hours):
                start = first + timedelta(hours=hour, seconds=replica)
                window = type(base)(
                    window_start=start,
                    window_end=start + timedelta(seconds=60),
                    request_count=1000,
                    error_count=0,
                    latency=base.latency,
                    features=features,
                )
                events.append(
                    ModelEvent(
                        envelope=Envelope(
                            event_id=str(uuid.uuid4()),
                            event_time=window.window_end,
                            producer=Producer(
                                emitter_name="bench",
                                emitter_version="0",
                                host=f"node-{replica}",
                                pid=1,
                                instance_id=f"i{n}-{replica}",
                            ),
                            sequence=hour + 1,
                            deployment=Deployment(
                                server_kind="python", server_name=f"s{n}", cluster=cluster
                            ),
                            model=ModelIdentity(name=f"m{n}", version="1"),
                        ),
                        payload=window,
                    )
                )
        updates = [u for e in events for u in translate(e, Rules())]
        result = coalesce(updates, {u.ref: EntityState() for u in updates if u.key is not None})
        out += result.entities
    # Deployments first: the figures refer to them.
    return sorted(out, key=lambda e: e.type_name == SERVING_STATS)


def _steady_state(rest: Any, suffix: str, deployments: int) -> Figure:
    """Updates/s of version figures with 48 hours of rollups, against the same figures after
    one hour of windows: what Atlas pays for the live figures once they are full."""
    from atlas_sink.core.translate import SERVING_STATS

    rates = {}
    for hours in (1, 48):
        entities = _live_figures(f"steady{hours}-{suffix}", deployments, hours)
        rest.write(entities)  # created; what is timed is the update every batch makes
        figures = [e for e in entities if e.type_name == SERVING_STATS]
        for entity in figures:
            lifetime = entity.attributes["lifetime"]
            entity.attributes["lifetime"] = {**lifetime, "requests": lifetime["requests"] + 1}
        began = time.perf_counter()
        rest.write(figures)
        rates[hours] = len(figures) / (time.perf_counter() - began)
    return Figure(
        f"atlas_rest_figures_update_{deployments}_full_rollups",
        rates[48],
        "entities/s",
        "the same figures after one hour of windows",
        rates[1],
        extra={"rollups": 48, "replicas": 3, "features": 13},
    )


def _poll(check: Any, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("Atlas did not apply the hook messages in time")
        time.sleep(0.2)


def run() -> Iterator[Figure]:
    from atlas_sink.atlas import entity_json
    from atlas_sink.atlas.client import AtlasClient
    from atlas_sink.targets.atlas_hook import AtlasHookTarget
    from atlas_sink.targets.atlas_rest import AtlasRestTarget
    from local_services.atlas import PASSWORD, USER, AtlasService
    from local_services.process import free_port

    bootstrap = kafka_bootstrap()
    state = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    suffix = uuid.uuid4().hex[:8]
    service = AtlasService(
        state,
        kafka_bootstrap=bootstrap,
        hook_topic=f"ATLAS_HOOK_bench_{suffix}",
        consumer_group=f"atlas-bench-{suffix}",
        port=free_port(),
    )
    started = service.start()
    try:
        client = AtlasClient(started.address, (USER, PASSWORD))
        rest = AtlasRestTarget(client)
        rest.ensure_types()
        # A fresh Atlas is slow on its first writes (JIT, caches): warm it, unmeasured, so the
        # first figure does not flatter whatever comes second.
        rest.write(_entities(f"warm-{suffix}", 50))
        for deployments in SIZES:
            # Baseline: Atlas's bulk upsert of the same JSON, batches as the REST target cuts.
            raw = _entities(f"raw{deployments}-{suffix}", deployments)
            began = time.perf_counter()
            for batch in rest._batches(raw):
                client.request(
                    "POST",
                    "/entity/bulk",
                    body=entity_json.bulk_request(list(batch), rest.model),
                    what="bench bulk",
                )
            raw_rate = len(raw) / (time.perf_counter() - began)

            ours = _entities(f"rest{deployments}-{suffix}", deployments)
            began = time.perf_counter()
            result = rest.write(ours)
            rest_rate = len(ours) / (time.perf_counter() - began)
            yield Figure(
                f"atlas_rest_backlog_{deployments}",
                rest_rate,
                "entities/s",
                "Atlas bulk upsert of the same entities",
                raw_rate,
                target="ratio >= 0.8",
                extra={"entities": len(ours), "requests": result.requests},
            )

            hooked = _entities(f"hook{deployments}-{suffix}", deployments)
            hook = AtlasHookTarget(bootstrap, topic=service.hook_topic)
            began = time.perf_counter()
            sent = hook.write(hooked)
            hook.close()
            # One partition, applied in order, a message in one transaction: when the last
            # entity sent is there, all are. Polling that one keeps the poll's load off Atlas.
            last = entity_json.topological_order(hooked)[-1]
            _poll(lambda last=last: client.entity(last.type_name, last.qualified_name) is not None)
            hook_rate = len(hooked) / (time.perf_counter() - began)
            refs = [e.ref for e in hooked]
            if len(client.entities(refs)) != len(refs):
                raise RuntimeError("Atlas applied the last hook entity but not all before it")
            yield Figure(
                f"atlas_hook_backlog_{deployments}",
                hook_rate,
                "entities/s",
                "the REST target in the same run",
                rest_rate,
                target="ratio >= 0.5 (within 2x of REST)",
                extra={"entities": len(hooked), "messages": sent.requests},
            )
        yield _steady_state(rest, suffix, 100)
        for target, rate, limit in LIVE:
            for deployments in SIZES:
                hook_topic = service.hook_topic
                figure = _freshness(client, bootstrap, hook_topic, target, deployments, rate)
                figure.target = None if limit is None else f"<= {limit:g} s at {rate:g} events/s"
                yield figure
        client.close()
    finally:
        service.stop()
        shutil.rmtree(state, ignore_errors=True)


def _freshness(
    client: Any, bootstrap: str, hook_topic: str, target: str, deployments: int, rate: float
) -> Figure:
    from atlas_sink.core import naming
    from atlas_sink.core.entities import Ref
    from atlas_sink.core.translate import SERVING_STATS
    from atlas_sink.kafka.consumer import SinkConsumer
    from atlas_sink.runtime.config import load_config
    from atlas_sink.service import wiring
    from bench import atlas_freshness
    from local_services import harness
    from local_services.atlas import PASSWORD, USER

    suffix = uuid.uuid4().hex[:8]
    topic, cluster = f"bench-fresh-{suffix}", f"fresh{deployments}-{suffix}"
    harness.create_topics(bootstrap, [topic, f"{topic}.dlq"])
    config = load_config(
        {},
        overrides={
            "kafka_bootstrap_servers": bootstrap,
            "topics": [topic],
            "dlq_topic": f"{topic}.dlq",
            "group_id": f"bench-fresh-{suffix}",
            "target": target,
            "atlas_url": client.base_url,
            "atlas_user": USER,
            "atlas_password": PASSWORD,
            "atlas_hook_topic": hook_topic,
        },
    )
    # The probe's live figures: where the sink writes its windows.
    probe = Ref(SERVING_STATS, naming.serving_stats("fresh", atlas_freshness.PROBE, "1", cluster))

    def run_sink(stop: Any) -> None:
        sink_target = wiring.build_target(config)
        sink_target.ensure_types()
        try:
            SinkConsumer(config, wiring.pipeline_factory(config, sink_target), stop=stop).run()
        finally:
            sink_target.close()

    def probe_window_end() -> int | None:
        found = client.attributes_of([probe], ["latestWindow"])
        window = (found.get(probe) or {}).get("latestWindow")
        return None if not window else int(window["attributes"]["end"])

    run = atlas_freshness.measure(
        bootstrap=bootstrap,
        topic=topic,
        cluster=cluster,
        deployments=deployments,
        rate=rate,
        seconds=FRESH_SECONDS,
        run_sink=run_sink,
        probe_window_end=probe_window_end,
    )
    return Figure(
        f"atlas_{target.removeprefix('atlas-')}_freshness_p99_{deployments}_at_{rate:g}",
        run.p(0.99),
        "s",
        extra={
            "p50": round(run.p(0.5), 3),
            "max": round(max(run.ages), 3),
            "probes": len(run.ages),
            "events_per_s_sent": round(run.sent / run.seconds, 1),
            "deployments": deployments,
            "batch_max_messages": config.batch_max_messages,
            "batch_max_wait_seconds": config.batch_max_wait_seconds,
        },
    )
