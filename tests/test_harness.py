"""local_services.harness without services: what the demo, the benchmarks and the tests rely on
when they wait, build a sink's environment or stop a child. Topic creation runs against the
real broker in every integration test."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local_services import harness


def test_wait_for_returns_the_first_accepted_value() -> None:
    counter = itertools.count()
    assert harness.wait_for("three", lambda: next(counter), 5, 0.001, until=lambda n: n >= 3) == 3


def test_a_timed_out_wait_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(harness.WaitTimeout) as failed:
        harness.wait_for(
            "the lag to be 0",
            lambda: 7,
            0.05,
            0.01,
            until=lambda lag: lag == 0,
            context=lambda: "sink alive",
        )
    assert str(failed.value) == (
        "timed out after 0.05 s waiting for the lag to be 0; last seen: 7; sink alive"
    )
    assert failed.value.last == 7
    assert isinstance(failed.value, TimeoutError)


def test_between_replaces_the_pause_and_a_probe_error_ends_the_wait() -> None:
    steps: list[int] = []
    harness.wait_for("two steps", lambda: len(steps) >= 2, 5, 60, between=lambda: steps.append(1))
    assert steps == [1, 1]

    def exited() -> bool:
        raise RuntimeError("the sink exited with 1")

    began = time.monotonic()
    with pytest.raises(RuntimeError, match="exited"):
        harness.wait_for("anything", exited, 60)
    assert time.monotonic() - began < 1


def test_the_child_environment_drops_the_callers_sink_settings() -> None:
    base = {
        "PATH": "/bin",
        "SINK_CONFIG_FILE": "/etc/sink.yaml",
        "ATLAS_URL": "http://elsewhere",
        "ATLAS_PASSWORD": "secret",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SCHEMA_REGISTRY_URL": "http://r",
    }
    assert harness.child_environment(base) == {"PATH": "/bin"}
    kept = harness.child_environment(base, keep=("KAFKA_", "ATLAS_PASSWORD"))
    assert kept == {
        "PATH": "/bin",
        "ATLAS_PASSWORD": "secret",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    }


def test_the_sink_environment_names_its_target(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "SINK_TARGET": "atlas-hook", "SINK_BATCH_MAX_MESSAGES": "1"}
    local = harness.sink_environment(
        "k:9092",
        ["a", "b"],
        group="g",
        dlq_topic="a.dlq",
        catalog=tmp_path / "c.sqlite",
        base=base,
        settings={"SINK_RETRY_MAX_SECONDS": "1"},
    )
    assert local == {
        "PATH": "/bin",
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        "SINK_TOPICS": "a,b",
        "SINK_GROUP_ID": "g",
        "SINK_DLQ_TOPIC": "a.dlq",
        "SINK_TARGET": "local",
        "SINK_CATALOG_PATH": str(tmp_path / "c.sqlite"),
        "SINK_METRICS_HOST": "127.0.0.1",
        "SINK_METRICS_PORT": "0",
        "SINK_RETRY_MAX_SECONDS": "1",
    }
    remote = harness.sink_environment(
        "k:9092", "a", atlas_url="http://a:21000", atlas_auth=("u", "p"), base={}
    )
    assert (remote["SINK_TARGET"], remote["ATLAS_URL"]) == ("atlas-rest", "http://a:21000")
    assert (remote["ATLAS_USERNAME"], remote["ATLAS_PASSWORD"]) == ("u", "p")
    assert "SINK_GROUP_ID" not in remote and "SINK_CATALOG_PATH" not in remote
    with pytest.raises(ValueError, match="not both"):
        harness.sink_environment("k:9092", "a", catalog="c", atlas_url="http://a", base={})


_IGNORES_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def test_stop_process_returns_the_exit_code_of_a_child_that_obeys_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert harness.stop_process(proc, 10) == -15
    assert harness.stop_process(proc, 10) == -15  # already stopped: only its code


def test_stop_process_kills_the_group_of_a_child_that_ignores_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _IGNORES_SIGTERM],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    began = time.monotonic()
    assert harness.stop_process(proc, 0.5) is None
    assert time.monotonic() - began < 10
    assert proc.returncode == -9
    proc.stdout.close()


def test_a_wait_on_a_child_ends_when_the_child_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(harness.ChildExited, match="exited with code 3 while waiting for x") as exc:
        harness.wait_for("x", lambda: False, 60, process=proc, context=lambda: "its log")
    assert exc.value.returncode == 3
    assert str(exc.value).endswith("; its log")
