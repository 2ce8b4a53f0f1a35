"""Publish a model version on the model control topic: train the demo's wine classifier with
the given hyper-parameters, save it, and send its descriptor (artifact bytes inline, their
hash, and the facts the catalog is told when a server applies it).

    python -m demo.publish_model --version 2     # KAFKA_BOOTSTRAP_SERVERS names the broker
    python -m demo.publish_model --version 3 --param n_estimators=50 --param max_depth=4
    python -m demo.publish_model --version 4 --corrupt   # bytes that do not match their hash

Every serving process reading the topic applies it: ``demo.server`` and each instance of
``demo.flink_job``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capture.config import KafkaSecurity
from capture.events import Runtime
from demo import descriptor as descriptors
from demo.descriptor import ArtifactFormat, ModelDescriptor
from demo.model import (
    V1_PARAMS,
    V2_PARAMS,
    load_data,
    model_loaded,
    save_artifact,
    train,
    write_training_csv,
)

DEFAULT_CONTROL_TOPIC = "wine-models"
DEFAULT_MODEL_NAME = "wine-classifier"


def build(
    version: str,
    work_dir: Path,
    *,
    params: Mapping[str, Any] | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    seed: int = 42,
    owner: str = "wine-data-science",
    with_probability: bool | None = None,
    corrupt: bool = False,
) -> ModelDescriptor:
    """The descriptor of a newly trained version. ``with_probability``: whether servers write
    the probability beside the cultivar (default: every version after the first, so the
    output schema changes once). ``corrupt``: the artifact's bytes are altered after hashing,
    as a damaged transfer would, so servers must refuse it."""
    chosen = dict(params) if params is not None else V1_PARAMS if version == "1" else V2_PARAMS
    data = load_data()
    model = train(version, chosen, seed=seed, data=data)
    directory = work_dir / "models" / model_name / version
    facts = save_artifact(model, directory, "joblib")
    artifact = (directory / "model.joblib").read_bytes()
    announcement = model_loaded(
        model,
        facts,
        source=write_training_csv(data, work_dir / "data" / "wine.csv"),
        # The publisher's own; each server announces its runtime, inputs and outputs instead.
        runtime=Runtime(
            language="python",
            language_version=platform.python_version(),
            host=socket.gethostname(),
        ),
        inputs=[],
        outputs=[],
        owner=owner,
        with_probability=version != "1" if with_probability is None else with_probability,
    )
    digest = descriptors.content_hash(artifact)
    if corrupt:
        artifact = bytes([artifact[0] ^ 0xFF]) + artifact[1:]
    return ModelDescriptor(
        name=model_name,
        version=version,
        description=f"random forest on the wine data, {json.dumps(chosen, sort_keys=True)}",
        artifact_format=ArtifactFormat.JOBLIB,
        artifact_bytes=artifact,
        content_hash=digest,
        announcement=announcement,
    )


def publish(bootstrap: str, topic: str, value: bytes, key: str, timeout: float = 30.0) -> None:
    """Send one control message and wait until the broker has it."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            # A descriptor carries its artifact: allow a model of a few megabytes.
            "message.max.bytes": 16 * 1024 * 1024,
            **KafkaSecurity.from_env().librdkafka(),
        }
    )
    failures: list[str] = []
    producer.produce(
        topic,
        value=value,
        key=key.encode(),
        on_delivery=lambda err, _msg: failures.append(str(err)) if err else None,
    )
    left = producer.flush(timeout)
    if left or failures:
        reason = failures[0] if failures else f"not delivered within {timeout:g} s"
        raise KafkaException(f"the descriptor did not reach {topic} on {bootstrap}: {reason}")


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.publish_model", description=__doc__)
    a = parser.add_argument
    a("--version", required=True, help="the version to publish")
    a(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="KAFKA_BOOTSTRAP_SERVERS",
    )
    a(
        "--topic",
        default=DEFAULT_CONTROL_TOPIC,
        help=f"control topic (default {DEFAULT_CONTROL_TOPIC})",
    )
    a("--model-name", default=DEFAULT_MODEL_NAME)
    a("--param", type=_param, action="append", help="a hyper-parameter, name=value (repeat)")
    a("--seed", type=int, default=42)
    a("--work-dir", type=Path, default=Path(".run/demo/publisher"), help="artifacts go here")
    a("--corrupt", action="store_true", help="alter the artifact after hashing it")
    args = parser.parse_args(argv)
    if not args.bootstrap:
        print("error: pass --bootstrap host:port or set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    descriptor = build(
        args.version,
        args.work_dir,
        params=dict(args.param) if args.param else None,
        model_name=args.model_name,
        seed=args.seed,
        corrupt=args.corrupt,
    )
    value = descriptors.encode(descriptor)
    try:
        publish(args.bootstrap, args.topic, value, descriptor.name)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"published {descriptor.name} {descriptor.version} on {args.topic} "
        f"({len(value):,} bytes, artifact {descriptor.content_hash})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
