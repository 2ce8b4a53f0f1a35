"""`atlas-sink init-types` against real Atlas servers: on an Atlas that has Atlas's own models it
checks the built-in types the sink writes and registers only the project's; on one that lacks
some (an Atlas started with only Atlas's core model) it names what is missing and writes
nothing.

The second Atlas is always the project's own (a subset of deploy/atlas/builtin), started once
for this module: about a minute on two cores."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from atlas_sink.atlas.builtin_types import builtin_typedefs
from atlas_sink.atlas.typedefs import CATEGORIES, load_project_typedefs, type_names
from local_services import harness
from tests.services import AtlasServer, own_atlas

pytestmark = pytest.mark.atlas

BUDGET = 900
# Atlas's core and glossary models only: no file system, Avro, Kafka or S3 types.
CORE_ONLY = ("10-atlas-core", "11-glossary")


def _init_types(server: AtlasServer) -> subprocess.CompletedProcess[str]:
    env = {
        **harness.child_environment(),
        "SINK_TARGET": "atlas-rest",
        "ATLAS_URL": server.url,
        "ATLAS_USERNAME": server.auth[0],
        "ATLAS_PASSWORD": server.auth[1],
    }
    return subprocess.run(
        [sys.executable, "-m", "atlas_sink", "init-types"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _typedef(server: AtlasServer, name: str) -> dict[str, Any] | None:
    answer = requests.get(
        f"{server.url}/api/atlas/v2/types/typedefs",
        params={"name": name},
        auth=server.auth,
        timeout=30,
    )
    answer.raise_for_status()
    for category in CATEGORIES:
        for definition in answer.json().get(category) or []:
            found: dict[str, Any] = definition
            return found
    return None


@pytest.fixture(scope="module")
def core_only_atlas(kafka_bootstrap: str) -> Iterator[AtlasServer]:
    with own_atlas(kafka_bootstrap, model_files=CORE_ONLY) as server:
        yield server


@pytest.mark.timeout(BUDGET)
def test_init_types_checks_atlas_s_types_and_registers_only_the_project_s(
    atlas_server: AtlasServer,
) -> None:
    builtin = [d["name"] for c in CATEGORIES for d in builtin_typedefs()[c]]
    before = {}
    for name in builtin:
        stored = _typedef(atlas_server, name)
        assert stored is not None, f"the session's Atlas lacks {name}"
        before[name] = (stored["guid"], stored["version"])
    done = _init_types(atlas_server)
    assert done.returncode == 0, done.stderr
    # Atlas's own types are read, never written: same guid, same version.
    after = {}
    for name in builtin:
        stored = _typedef(atlas_server, name)
        assert stored is not None
        after[name] = (stored["guid"], stored["version"])
    assert after == before
    for name in type_names(load_project_typedefs()):
        assert _typedef(atlas_server, name) is not None, name


@pytest.mark.timeout(BUDGET)
def test_init_types_on_an_atlas_without_the_models_it_writes_stops_before_writing(
    core_only_atlas: AtlasServer,
) -> None:
    assert _typedef(core_only_atlas, "DataSet") is not None
    assert _typedef(core_only_atlas, "kafka_topic") is None
    done = _init_types(core_only_atlas)
    assert done.returncode == 1, done.stderr
    for missing in (
        "entity type kafka_topic",
        "entity type fs_path",
        "entity type hdfs_path",
        "entity type aws_s3_v2_object",
    ):
        assert missing in done.stderr
    assert "Nothing was written" in done.stderr
    # Core types are there: not named.
    assert "entity type DataSet" not in done.stderr
    assert "relationship type dataset_process_inputs" not in done.stderr
    for name in type_names(load_project_typedefs()):
        assert _typedef(core_only_atlas, name) is None, f"{name} was written"
