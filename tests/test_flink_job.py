"""The Flink job (demo.flink_job: PyFlink's mini cluster, parallelism 2) on the real broker,
run as a user runs it: descriptors on the control topic, requests in, and what the catalog
makes of the lifecycle events its two instances send, through a cancel and a restore from a
retained checkpoint."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from atlas_sink.catalog.model import StoredEntity
from atlas_sink.core import naming
from atlas_sink.core.translate import DEPLOYMENT, MODEL_VERSION, SERVING_STATS
from atlas_sink.targets.local import LocalCatalog
from capture.events import ModelLoaded, ModelLoadFailed, ModelUnloaded, ScoringStats
from demo import descriptor
from demo.descriptor import ModelDescriptor
from demo.publish_model import build, publish
from local_services import harness
from tests.serving_io import Reader, into_catalog, send_requests

pytest.importorskip("pyflink")
pytestmark = pytest.mark.integration

MODEL = "wine-classifier"
JOB = "wine-scorer-flink"
CLUSTER = "fj"


@dataclass
class Run:
    bootstrap: str
    requests: str
    scores: str
    models: str
    events: str
    work: Path

    def publish(self, published: ModelDescriptor) -> None:
        publish(self.bootstrap, self.models, descriptor.encode(published), MODEL)

    def start_job(self, *, restore: bool = False) -> subprocess.Popen[bytes]:
        ready = self.work / f"ready-{uuid.uuid4().hex[:6]}"
        log = (self.work / "job.log").open("ab")
        command = [
            sys.executable,
            "-m",
            "demo.flink_job",
            "--bootstrap",
            self.bootstrap,
            "--work-dir",
            str(self.work),
            "--input-topic",
            self.requests,
            "--output-topic",
            self.scores,
            "--control-topic",
            self.models,
            "--events-topic",
            self.events,
            "--cluster",
            CLUSTER,
            "--group-id",
            f"fj-{uuid.uuid4().hex[:8]}",
            "--window-seconds",
            "1",
            "--checkpoint-seconds",
            "1",
            "--ready-file",
            str(ready),
            *(["--restore-from", "latest"] if restore else []),
        ]
        job = subprocess.Popen(
            command, env=harness.child_environment(), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            harness.wait_for(
                "the Flink job to run", ready.exists, 180, process=job, context=self.log_tail
            )
        except BaseException:
            harness.stop_process(job, timeout=60)  # a job that never ran is not left behind
            raise
        return job

    def log_tail(self) -> str:
        lines = (self.work / "job.log").read_text(errors="replace").splitlines()
        return "the job's log ends:\n" + "\n".join(lines[-30:])

    def checkpoint_after(self, moment: float) -> None:
        """Wait for a checkpoint completed after ``moment`` (time.time())."""
        from demo.flink_job import latest_checkpoint

        def newest() -> float:
            found = latest_checkpoint(self.work)
            return (found / "_metadata").stat().st_mtime if found else 0.0

        harness.wait_for("a checkpoint", newest, 60, until=lambda at: at > moment)


@pytest.fixture
def run(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Run]:
    tag = uuid.uuid4().hex[:8]
    made = Run(
        kafka_bootstrap,
        f"fj-requests.{tag}",
        f"fj-scores.{tag}",
        f"fj-models.{tag}",
        f"fj-events.{tag}",
        tmp_path,
    )
    # Two request partitions, so that each of the two instances reads one.
    harness.create_topics(kafka_bootstrap, [made.requests], partitions=2)
    harness.create_topics(kafka_bootstrap, [made.scores, made.models, made.events], partitions=1)
    yield made


def _stopped(job: subprocess.Popen[bytes], run: Run) -> None:
    code = harness.stop_process(job, timeout=90)
    assert code == 0, f"the job exited with {code}; {run.log_tail()}"


def _entity(catalog: LocalCatalog, type_name: str, name: str) -> StoredEntity:
    found = catalog.entity(type_name, name)
    assert found is not None, f"no {type_name} {name}"
    return found


def test_two_replicas_serve_descriptors_from_the_control_topic_through_cancel_and_restore(
    run: Run, tmp_path: Path
) -> None:
    versions = {v: build(v, tmp_path / "publisher") for v in ("1", "2")}
    events = Reader(run.bootstrap, run.events)
    scores = Reader(run.bootstrap, run.scores)
    run.publish(versions["1"])
    job = run.start_job()
    try:
        loads = harness.wait_for(
            "both instances to load version 1",
            lambda: events.payloads(ModelLoaded),
            120,
            until=lambda found: len(found) >= 2,
            process=job,
            context=run.log_tail,
        )
        assert [(v, p.replaces_version) for v, p in loads] == [("1", None), ("1", None)]
        send_requests(run.bootstrap, run.requests, [f"a{n}" for n in range(40)])

        # A new version on the control topic replaces the old one in both instances.
        run.publish(versions["2"])
        harness.wait_for(
            "both instances to load version 2",
            lambda: [p for v, p in events.payloads(ModelLoaded) if v == "2"],
            60,
            until=lambda found: len(found) == 2,
            process=job,
        )
        assert all(p.replaces_version == "1" for v, p in events.payloads(ModelLoaded) if v == "2")
        # A corrupted one is refused by both; version 2 serves on.
        corrupt = replace(
            versions["1"],
            version="3",
            artifact_bytes=b"\x00" + (versions["1"].artifact_bytes or b"")[1:],
        )
        run.publish(corrupt)
        failed = harness.wait_for(
            "both instances to refuse version 3",
            lambda: events.payloads(ModelLoadFailed),
            60,
            until=lambda found: len(found) == 2,
            process=job,
        )
        assert {(v, p.error_kind) for v, p in failed} == {("3", "ContentHashMismatch")}
        send_requests(run.bootstrap, run.requests, [f"b{n}" for n in range(40)])
        results = harness.wait_for(
            "every request scored",
            scores.results,
            60,
            until=lambda found: len(found) == 80,
            process=job,
        )
        assert {r["instance"] for r in results.values()} == {0, 1}
        assert {r["model_version"] for k, r in results.items() if k.startswith("b")} == {"2"}
        run.checkpoint_after(time.time())
    finally:
        _stopped(job, run)

    # Cancelled: both instances unloaded version 2, after their last windows.
    unloads = events.payloads(ModelUnloaded)
    assert [v for v, _ in unloads] == ["2", "2"]
    with into_catalog(tmp_path / "cancelled.sqlite", events) as catalog:
        v2 = _entity(catalog, MODEL_VERSION, naming.model_version(MODEL, "2", CLUSTER))
        assert v2.attributes["status"] == "UNLOADED"
        assert v2.attributes["replacesVersion"] == "1"
        loaded_at = v2.attributes["loadedAt"]
        v3 = _entity(catalog, MODEL_VERSION, naming.model_version(MODEL, "3", CLUSTER))
        assert v3.attributes["status"] == "FAILED"
        deployment = _entity(catalog, DEPLOYMENT, naming.deployment(JOB, MODEL, CLUSTER))
        assert deployment.attributes["status"] == "STOPPED"
        # Both replicas' windows, merged per version: every request counted once.
        figures = {
            r.entity.attributes["version"]: r.entity.attributes
            for r in catalog.referrers(DEPLOYMENT, deployment.qualified_name, "deployment")
            if r.entity.type_name == SERVING_STATS
        }
        assert sum(f["lifetime"]["requests"] for f in figures.values()) == 80
        assert len(figures["2"]["replicas"]) == 2
    windows = events.payloads(ScoringStats)
    assert sum(p.request_count for _, p in windows) == 80

    # Restored from the retained checkpoint: each new instance resumes version 2 without a
    # new load; the catalog keeps when it was loaded and what it replaced.
    job = run.start_job(restore=True)
    try:
        # Requests to both partitions: an instance resumes on its first element.
        send_requests(run.bootstrap, run.requests, [f"c{n}" for n in range(20)])
        after = harness.wait_for(
            "the requests after the restore scored",
            lambda: {k: r for k, r in scores.results().items() if k.startswith("c")},
            60,
            until=lambda found: len(found) == 20,
            process=job,
        )
        assert {r["model_version"] for r in after.values()} == {"2"}
        restored = harness.wait_for(
            "both restored instances to announce version 2",
            lambda: [p for v, p in events.payloads(ModelLoaded) if p.restored],
            60,
            until=lambda found: len(found) == 2,
            process=job,
        )
        assert {p.replaces_version for p in restored} == {None}
        with into_catalog(tmp_path / "restored.sqlite", events) as catalog:
            v2 = _entity(catalog, MODEL_VERSION, naming.model_version(MODEL, "2", CLUSTER))
            assert v2.attributes["status"] == "LOADED"
            assert v2.attributes["loadedAt"] == loaded_at
            assert v2.attributes["replacesVersion"] == "1"
            v1 = _entity(catalog, MODEL_VERSION, naming.model_version(MODEL, "1", CLUSTER))
            assert v1.attributes["status"] == "REPLACED"
            deployment = _entity(catalog, DEPLOYMENT, naming.deployment(JOB, MODEL, CLUSTER))
            assert (deployment.attributes["status"], deployment.attributes["currentVersion"]) == (
                "IN_SERVICE",
                "2",
            )
        # Two loads of version 2 in all (one per instance), however many restores.
        assert len([p for v, p in events.payloads(ModelLoaded) if v == "2" and not p.restored]) == 2
    finally:
        _stopped(job, run)

    # A fresh job (no checkpoint) starts at the newest version it can apply: version 2 loaded
    # by each instance, version 1 not announced again; the corrupt version 3, newer, is tried
    # again and refused again.
    before = len(events.events())
    fresh = replace(run, work=tmp_path / "fresh")
    fresh.work.mkdir()
    job = fresh.start_job()
    try:
        send_requests(run.bootstrap, run.requests, [f"d{n}" for n in range(20)])
        harness.wait_for(
            "the fresh job's instances to load version 2",
            lambda: [
                e
                for e in events.events()[before:]
                if isinstance(e.payload, ModelLoaded) and not e.payload.restored
            ],
            60,
            until=lambda found: len(found) == 2,
            process=job,
            context=fresh.log_tail,
        )
        news = events.events()[before:]
        assert {e.envelope.model.version for e in news if isinstance(e.payload, ModelLoaded)} == {
            "2"
        }
        refused = harness.wait_for(
            "the fresh job's instances to refuse version 3",
            lambda: [
                e.envelope.model.version
                for e in events.events()[before:]
                if isinstance(e.payload, ModelLoadFailed)
            ],
            60,
            until=lambda found: len(found) == 2,
            process=job,
        )
        assert refused == ["3", "3"]
    finally:
        _stopped(job, fresh)
    events.close()
    scores.close()
