"""The deployment files and docs/operations.md agree with the code, checked statically.

No Docker engine or cluster runs here, so the Dockerfile, docker-compose.yml and deploy/k8s/ are
parsed and compared with what the code reads: the environment variables (recorded by running
the sink's and the emitter's own configuration loaders), the `atlas-sink` console script and
its argparse subcommands, the metrics port and health paths, the extras of pyproject.toml, the
Secret's keys, and the versions local_services runs. Renaming a variable, a subcommand or a
metric without updating these files makes a test here fail.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from atlas_sink import __version__ as sink_version
from atlas_sink.runtime import exit_codes
from atlas_sink.runtime.config import SETTINGS, SinkConfig, load_config, settings_reference
from atlas_sink.runtime.metrics import SinkMetrics
from atlas_sink.service import cli
from capture.config import EmitterConfig
from demo.publish_model import DEFAULT_CONTROL_TOPIC
from local_services.atlas import STATUS_PATH
from local_services.cli import _parser as local_services_parser
from local_services.kafka import KAFKA_VERSION
from local_services.registry import CCOMPAT_PATH, DEFAULT_VERSIONS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
OPERATIONS = ROOT / "docs" / "operations.md"

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
PROJECT_VERSION = PYPROJECT["project"]["version"]
DEFAULTS = SinkConfig()
METRICS_PORT = DEFAULTS.metrics_port

# Read by the Python interpreter itself, not by the project: allowed in the image.
INTERPRETER_VARIABLES = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
# Extras the compose file may name before pyproject.toml has them: the demo package of issue 5
# brings the `demo` extra; test_demo_extra_and_package checks it once it is there.
PENDING_EXTRAS = {"demo"}
# Image and package registries: image references carry no host, the files name none.
REGISTRY_HOSTS = (
    "docker.io",
    "quay.io",
    "ghcr.io",
    "gcr.io",
    "registry.k8s.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
    "pypi.org",
    "pythonhosted.org",
    "repo1.maven.org",
    "repo.maven.apache.org",
)


# -- what the code reads -----------------------------------------------------------------------


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _sink_variables() -> frozenset[str]:
    env = RecordingEnv()
    load_config(env=env)
    return frozenset(env.read)


def _emitter_variables() -> frozenset[str]:
    env = RecordingEnv()
    EmitterConfig.from_env(env, bootstrap_servers="kafka:9092")
    return frozenset(env.read)


SINK_VARIABLES = _sink_variables()
EMITTER_VARIABLES = _emitter_variables()


def _parser_variables(module: str) -> frozenset[str]:
    """What the demo module's argparse defaults read from the environment."""
    parser_module = pytest.importorskip(module)
    env = RecordingEnv()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "environ", env)
        parser_module.build_parser()
    return frozenset(env.read)


def demo_server_variables() -> frozenset[str]:
    return _parser_variables("demo.server")


def demo_traffic_variables() -> frozenset[str]:
    return _parser_variables("demo.traffic")


def unknown(names: set[str] | list[str], known: frozenset[str] | set[str]) -> list[str]:
    return sorted(set(names) - set(known))


def parse_sink_args(argv: list[str]) -> argparse.Namespace:
    """``atlas-sink argv`` through the CLI's own parser; a clear failure when it is refused."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`atlas-sink {shlex.join(argv)}` is refused: {errors.getvalue().strip()}")


def command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "dlq_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def is_secret_variable(name: str) -> bool:
    """A secret the code reads from NAME or from the file named by NAME_FILE."""
    return name in SINK_VARIABLES and f"{name}_FILE" in SINK_VARIABLES


def test_the_recorded_variables_are_the_codes() -> None:
    assert {s.env for s in SETTINGS} <= SINK_VARIABLES
    assert {"SINK_CONFIG_FILE", "ATLAS_USER", "ATLAS_PASSWORD_FILE"} <= SINK_VARIABLES
    assert {"KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_PASSWORD_FILE"} <= SINK_VARIABLES
    assert {"SERVEMETA_KAFKA_BOOTSTRAP_SERVERS", "SERVEMETA_WINDOW_SECONDS"} <= EMITTER_VARIABLES
    assert "SINK_TARGET" not in EMITTER_VARIABLES
    assert is_secret_variable("ATLAS_PASSWORD")
    assert is_secret_variable("KAFKA_SASL_PASSWORD")
    assert not is_secret_variable("ATLAS_USERNAME")


# -- the files ----------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return [COMPOSE_FILE, *sorted(K8S_DIR.glob("*.yaml"))]


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert len(documents) == 1
    document = documents[0]
    assert isinstance(document, dict)
    if path.parent == K8S_DIR:
        assert {"apiVersion", "kind"} <= set(document)
        if document["kind"] != "Kustomization":
            assert document["metadata"]["name"]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def k8s_objects() -> dict[str, dict[str, Any]]:
    """kind -> the one object of that kind in deploy/k8s/."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert document["kind"] not in objects, f"two {document['kind']} in deploy/k8s/"
        objects[document["kind"]] = document
    return objects


def sink_container() -> dict[str, Any]:
    containers = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["atlas-sink"]
    container: dict[str, Any] = containers[0]
    return container


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    stage: str


def dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = ""
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line, pending = pending + line, ""
        keyword, _, value = line.partition(" ")
        if keyword.upper() == "FROM":
            stage = value.split()[-1] if " AS " in value.upper() else value
        instructions.append(Instruction(keyword.upper(), value.strip(), stage))
    return instructions


def runtime_instructions(keyword: str) -> list[Instruction]:
    final = dockerfile()[-1].stage
    return [i for i in dockerfile() if i.keyword == keyword and i.stage == final]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in runtime_instructions("ENV"):
        for word in shlex.split(instruction.value):
            name, _, value = word.partition("=")
            env[name] = value
    return env


# -- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_slim_python_311() -> None:
    stages = [i.value for i in dockerfile() if i.keyword == "FROM"]
    assert stages == ["python:3.11-slim AS build", "python:3.11-slim AS runtime"]
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    build_runs = [i.value for i in dockerfile() if i.keyword == "RUN" and i.stage == "build"]
    assert any("pip wheel" in run and "--wheel-dir /dist" in run for run in build_runs)
    installs = [i.value for i in runtime_instructions("RUN") if "pip install" in i.value]
    assert len(installs) == 1
    assert "--mount=type=bind,from=build,source=/dist" in installs[0]
    assert '"$1[${EXTRAS}]"' in installs[0]


def test_dockerfile_extras_exist_in_pyproject() -> None:
    args = [i.value for i in runtime_instructions("ARG")]
    assert "EXTRAS=sink" in args
    default = next(a for a in args if a.startswith("EXTRAS=")).removeprefix("EXTRAS=")
    assert set(default.split(",")) <= EXTRAS
    assert "sink" in EXTRAS


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = runtime_instructions("USER")
    assert [u.value for u in users] == ["10001:10001"]
    uid = users[0].value.split(":")[0]
    assert uid not in ("0", "root")
    keywords = [i.keyword for i in dockerfile()]
    # Everything after USER runs as that user: no RUN may follow it.
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_dockerfile_healthcheck_probes_healthz_on_the_metrics_port() -> None:
    (check,) = runtime_instructions("HEALTHCHECK")
    options, _, command = check.value.partition(" CMD ")
    assert "--interval=30s" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "HEALTHCHECK", "exec")
    assert "/healthz" in argv[2]
    assert f"os.environ.get('SINK_METRICS_PORT', '{METRICS_PORT}')" in argv[2]


def test_dockerfile_entrypoint_is_the_console_script_and_cmd_is_run() -> None:
    assert PYPROJECT["project"]["scripts"]["atlas-sink"] == "atlas_sink.service.cli:main"
    (entrypoint,) = runtime_instructions("ENTRYPOINT")
    assert json.loads(entrypoint.value) == ["atlas-sink"]
    (cmd,) = runtime_instructions("CMD")
    args = parse_sink_args(json.loads(cmd.value))
    assert args.handler is cli.cmd_run


def test_dockerfile_ports_and_environment_agree_with_the_code() -> None:
    assert [i.value for i in runtime_instructions("EXPOSE")] == [str(METRICS_PORT)]
    env = dockerfile_env()
    assert unknown(list(env), SINK_VARIABLES | INTERPRETER_VARIABLES) == []
    config = load_config(env={k: v for k, v in env.items() if k in SINK_VARIABLES})
    assert config.metrics_port == METRICS_PORT
    assert config.metrics_host == "0.0.0.0"
    assert config.catalog_path == Path("/var/lib/servemeta/catalog.sqlite")
    assert [i.value for i in runtime_instructions("WORKDIR")] == ["/var/lib/servemeta"]


def test_dockerignore_admits_what_the_wheel_is_built_from() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= admitted
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= admitted
    # Package data reached through symbolic links must be in the context too.
    for link in (ROOT / "capture" / "schemas", ROOT / "atlas_sink" / "atlas_types"):
        assert link.is_symlink()
        target = link.resolve().relative_to(ROOT)
        assert str(target) in admitted, f"{link.name} -> {target} is not in the build context"


# -- docker-compose.yml -------------------------------------------------------------------------


def interpolate(value: Any) -> str:
    """Compose's ``${NAME:-default}`` as docker compose resolves it with NAME unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def compose_env(name: str) -> dict[str, str]:
    environment = service(name).get("environment") or {}
    assert isinstance(environment, dict), f"{name}: write environment as a mapping"
    return {k: interpolate(v) for k, v in environment.items()}


# Jobs that run once and exit 0: nothing waits for them to be healthy, only to have finished.
ONE_SHOT = {"topics", "traffic", "publish"}


def test_compose_has_the_pipelines_services() -> None:
    services = compose()["services"]
    assert set(services) == {
        "kafka",
        "topics",
        "registry",
        "atlas",
        "sink",
        "publish",
        "demo",
        "traffic",
    }
    assert {name for name, spec in services.items() if spec["restart"] == "no"} == ONE_SHOT


def test_compose_publishes_ports_on_loopback_only() -> None:
    published = {}
    for name, spec in compose()["services"].items():
        for port in spec.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
                continue
            parts = str(port).split(":")
            assert len(parts) == 3, f"{name}: {port!r} binds every interface; prefix 127.0.0.1:"
            assert parts[0] == "127.0.0.1", f"{name}: {port!r}"
            published[name] = (int(parts[1]), int(parts[2]))
        assert "0.0.0.0:" not in json.dumps(spec.get("ports", []))
    assert published == {
        "kafka": (9092, 9092),
        "registry": (8081, 8080),
        "atlas": (21000, 21000),
        "sink": (METRICS_PORT, METRICS_PORT),
    }


def test_compose_sink_environment_names_are_read_by_the_code() -> None:
    assert unknown(list(compose_env("sink")), SINK_VARIABLES) == []


def test_compose_demo_environment_names_are_read_by_the_code() -> None:
    assert {"DEMO_CONTROL_TOPIC", "DEMO_INPUT_TOPIC"} <= demo_server_variables()
    demo_variables = EMITTER_VARIABLES | demo_server_variables()
    assert unknown(list(compose_env("demo")), demo_variables) == []
    assert unknown(list(compose_env("traffic")), demo_traffic_variables()) == []


def test_compose_sink_settings_load() -> None:
    env = compose_env("sink")
    config = load_config(env=env)
    assert config.target == "atlas-rest"
    assert config.metrics_port == METRICS_PORT
    assert config.metrics_host == "0.0.0.0"
    assert config.atlas_url == "http://atlas:21000"
    assert config.registry_url == f"http://registry:8080{CCOMPAT_PATH}"
    assert config.catalog_path == Path(dockerfile_env()["SINK_CATALOG_PATH"])
    local = load_config(env={**env, "SINK_TARGET": "local"})
    assert local.target == "local"


def test_compose_demo_settings_load() -> None:
    config = EmitterConfig.from_env(compose_env("demo"))
    assert config.bootstrap_servers == "kafka:19092"
    assert config.registry_url == f"http://registry:8080{CCOMPAT_PATH}"


def test_compose_clients_use_the_advertised_internal_listener() -> None:
    kafka = compose_env("kafka")
    listeners = dict(
        item.split("://", 1) for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    assert listeners["INTERNAL"] == "kafka:19092"
    assert listeners["EXTERNAL"] == "127.0.0.1:9092"
    assert kafka["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
    for client in ("sink", "demo", "traffic", "publish"):
        assert compose_env(client)["KAFKA_BOOTSTRAP_SERVERS"] == listeners["INTERNAL"]
    assert f"--bootstrap-server {listeners['INTERNAL']} " in service("topics")["command"][0]


def test_compose_sink_command_is_a_subcommand_of_the_image_entrypoint() -> None:
    sink = service("sink")
    assert "entrypoint" not in sink  # the Dockerfile's ENTRYPOINT ["atlas-sink"]
    assert sink["build"]["dockerfile"] == "Dockerfile"
    assert parse_sink_args(sink["command"]).handler is cli.cmd_run


def test_compose_demo_and_traffic_run_from_the_sinks_image() -> None:
    demo, traffic, sink = service("demo"), service("traffic"), service("sink")
    assert demo["image"] == traffic["image"] == sink["image"] == "servemeta:local"
    assert demo["build"] == traffic["build"] == sink["build"]
    assert demo["entrypoint"] == ["python", "-m", "demo.server"]
    assert traffic["entrypoint"] == ["python", "-m", "demo.traffic"]


def test_compose_demo_flags_and_health_check_agree_with_the_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = pytest.importorskip("demo.server")
    traffic = pytest.importorskip("demo.traffic")
    demo = service("demo")
    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", compose_env("demo"))
        settings = server.settings_from_args(server.build_parser().parse_args(demo["command"]))
    assert settings.bootstrap == "kafka:19092"
    assert settings.control_topic == "wine-models"
    assert settings.ready_file == Path("/tmp/demo/ready")
    # /tmp is a tmpfs, so a restarted container is not healthy before it is ready again.
    assert demo["tmpfs"] == ["/tmp"]
    assert demo["healthcheck"]["test"] == ["CMD", "test", "-f", str(settings.ready_file)]
    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", compose_env("traffic"))
        sent = traffic.build_parser().parse_args(service("traffic")["command"])
    assert (sent.topic, sent.rate, sent.duration) == (settings.input_topic, 20.0, 120.0)
    # The topics job creates the topics every client needs, the demo's among them.
    command = service("topics")["command"][0]
    listed = re.fullmatch(r"for topic in ([^;]+); do .*", command)
    assert listed is not None
    assert listed.group(1).split() == [
        *DEFAULTS.topics,
        DEFAULTS.dlq_topic,
        settings.input_topic,
        settings.output_topic,
        settings.control_topic,
    ]
    assert settings.events_topic in DEFAULTS.topics
    # The publisher's version 1 goes to the topic the server reads its models from.
    publish = service("publish")
    assert publish["entrypoint"] == ["python", "-m", "demo.publish_model"]
    assert "--topic" not in publish["command"]
    assert settings.control_topic == DEFAULT_CONTROL_TOPIC


def test_compose_build_extras_exist_in_pyproject() -> None:
    for name in ("sink", "demo", "traffic"):
        extras = set(service(name)["build"]["args"]["EXTRAS"].split(","))
        assert extras == {"sink", "demo"}
        assert extras - PENDING_EXTRAS <= EXTRAS


def test_demo_extra_and_package() -> None:
    if "demo" not in EXTRAS:
        pytest.skip("pyproject.toml has no `demo` extra yet (the demo package of issue 5)")
    assert (ROOT / "demo" / "server.py").is_file()
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(pattern.startswith("demo") for pattern in include)


def test_compose_images_are_pinned_and_agree_with_local_services() -> None:
    services = compose()["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["topics"]["image"] == services["kafka"]["image"]
    assert services["registry"]["image"] == f"apicurio/apicurio-registry:{DEFAULT_VERSIONS[0]}"
    assert services["atlas"]["image"] == "sburn/apache-atlas:2.3.0"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "Apache Atlas publishes no official container image" in text
    assert "EXAMPLE" in text
    for spec in services.values():
        name, _, tag = spec["image"].rpartition(":")
        assert tag and tag != "latest", spec["image"]
        assert_no_registry_host(name)


def test_compose_health_checks_and_dependencies() -> None:
    services = compose()["services"]
    checks = {name: spec.get("healthcheck", {}) for name, spec in services.items()}
    # traffic runs the image whose HEALTHCHECK probes the sink: switched off; the Kafka image
    # of `topics` has none.
    assert checks["traffic"] == checks["publish"] == {"disable": True}
    assert checks["topics"] == {}
    for name in set(services) - ONE_SHOT:
        assert checks[name]["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in checks["kafka"]["test"]
    assert any(CCOMPAT_PATH in word for word in checks["registry"]["test"])
    assert any(STATUS_PATH in word and "ACTIVE" in word for word in checks["atlas"]["test"])
    probe = checks["sink"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"]
    compile(probe[3], "healthcheck", "exec")
    assert f"http://127.0.0.1:{METRICS_PORT}/healthz" in probe[3]

    depends = {name: spec.get("depends_on", {}) for name, spec in services.items()}
    assert set(depends["sink"]) == {"kafka", "topics", "registry", "atlas"}
    assert set(depends["demo"]) == {"kafka", "publish", "registry"}
    assert set(depends["publish"]) == {"topics"}
    assert set(depends["traffic"]) == {"demo"}
    assert set(depends["topics"]) == {"kafka"}
    for name, needs in depends.items():
        for dependency, condition in needs.items():
            if dependency in ONE_SHOT:
                assert condition == {"condition": "service_completed_successfully"}
                continue
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "test" in checks[dependency], f"{name} waits for {dependency}, never healthy"


def test_compose_volumes() -> None:
    services = compose()["services"]
    assert set(compose()["volumes"]) == {"kafka-data", "atlas-data", "sink-catalog"}
    mounts = {
        name: dict(str(v).split(":", 1) for v in spec.get("volumes", []))
        for name, spec in services.items()
    }
    assert mounts["kafka"] == {"kafka-data": compose_env("kafka")["KAFKA_LOG_DIRS"]}
    assert mounts["atlas"] == {"atlas-data": "/apache-atlas/data"}
    catalog = Path(compose_env("sink")["SINK_CATALOG_PATH"])
    assert mounts["sink"] == {"sink-catalog": str(catalog.parent)}
    assert services["sink"]["read_only"] is True
    assert services["sink"]["tmpfs"] == ["/tmp"]


# -- deploy/k8s ---------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    objects = k8s_objects()
    kustomization = objects.pop("Kustomization")
    files = sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    assert set(objects) == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    namespace = objects.pop("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace == "servemeta"
    for kind, document in objects.items():
        assert document["metadata"]["namespace"] == namespace, kind


def test_k8s_environment_names_are_read_by_the_code() -> None:
    objects = k8s_objects()
    config_map = objects["ConfigMap"]
    container = sink_container()
    assert unknown(list(config_map["data"]), SINK_VARIABLES) == []
    env_names = [e["name"] for e in container["env"]]
    assert unknown(env_names, SINK_VARIABLES) == []
    assert container["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
    # Secrets only through files: no variable takes its value from a Secret directly.
    assert all("valueFrom" not in e for e in container["env"])


def test_k8s_secret_keys_are_consumed_through_file_variables() -> None:
    objects = k8s_objects()
    secret = objects["Secret"]
    container = sink_container()
    volumes = objects["Deployment"]["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert sorted(secret["stringData"]) == ["ATLAS_PASSWORD", "KAFKA_SASL_PASSWORD"]
    for key in secret["stringData"]:
        assert is_secret_variable(key), f"the code reads no {key} / {key}_FILE"
        assert env[f"{key}_FILE"] == f"{mount['mountPath']}/{key}"
        assert key not in env
        assert key not in objects["ConfigMap"]["data"]
    words = json.dumps([container.get("command", []), container.get("args", [])])
    assert "change-me" not in words
    assert "PASSWORD" not in words


def test_k8s_settings_load_with_the_secret_files(tmp_path: Path) -> None:
    objects = k8s_objects()
    env = dict(objects["ConfigMap"]["data"])
    for key, value in objects["Secret"]["stringData"].items():
        path = tmp_path / key
        path.write_text(value + "\n", encoding="utf-8")
        env[f"{key}_FILE"] = str(path)
    config = load_config(env=env)
    assert config.target == "atlas-rest"
    assert config.atlas_password is not None
    assert config.atlas_password.get_secret_value() == "change-me"
    assert config.kafka_security.protocol == "SASL_SSL"
    assert config.kafka_security.sasl_password == "change-me"
    assert config.metrics_port == METRICS_PORT
    assert config.metrics_host == "0.0.0.0"


def test_k8s_deployment_runs_the_sink_image() -> None:
    container = sink_container()
    assert "command" not in container  # the image's ENTRYPOINT ["atlas-sink"]
    assert parse_sink_args(container["args"]).handler is cli.cmd_run
    assert sink_version == PROJECT_VERSION
    assert container["image"] == f"servemeta-atlas-sink:{PROJECT_VERSION}"
    name = container["image"].rpartition(":")[0]
    assert_no_registry_host(name)
    images = k8s_objects()["Kustomization"]["images"]
    assert images == [{"name": name, "newTag": PROJECT_VERSION}]


def test_k8s_ports_probes_and_scrape_annotations() -> None:
    objects = k8s_objects()
    deployment, svc = objects["Deployment"], objects["Service"]
    template = deployment["spec"]["template"]
    container = sink_container()
    assert container["ports"] == [
        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}
    ]
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert svc["spec"]["selector"] == labels
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert objects["ConfigMap"]["data"]["SINK_METRICS_PORT"] == str(METRICS_PORT)


def test_k8s_security_context_and_writable_volumes() -> None:
    deployment = k8s_objects()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = sink_container()
    uid = int(runtime_instructions("USER")[0].value.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    catalog = Path(k8s_objects()["ConfigMap"]["data"]["SINK_CATALOG_PATH"])
    assert "emptyDir" in volumes[mounts[str(catalog.parent)]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }


def test_k8s_grace_period_exceeds_the_shutdown_timeout() -> None:
    objects = k8s_objects()
    grace = objects["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    timeout = float(objects["ConfigMap"]["data"]["SINK_SHUTDOWN_TIMEOUT_SECONDS"])
    assert (grace, timeout) == (30, 20.0)
    assert grace > timeout
    strategy = objects["Deployment"]["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


# -- no registry host names ---------------------------------------------------------------------


def assert_no_registry_host(image_name: str) -> None:
    first = image_name.split("/")[0]
    has_host = "/" in image_name and ("." in first or ":" in first or first == "localhost")
    assert not has_host, f"{image_name}: name no registry host in an image reference"


def owned_files() -> list[Path]:
    return [
        DOCKERFILE,
        ROOT / ".dockerignore",
        COMPOSE_FILE,
        OPERATIONS,
        *sorted(K8S_DIR.glob("*.yaml")),
    ]


@pytest.mark.parametrize("path", owned_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_registry_host_names(path: Path) -> None:
    text = path.read_text(encoding="utf-8").lower()
    assert [host for host in REGISTRY_HOSTS if host in text] == []


# -- docs/operations.md -------------------------------------------------------------------------


def operations() -> str:
    return OPERATIONS.read_text(encoding="utf-8")


def between(text: str, name: str) -> str:
    begin, end = f"<!-- BEGIN {name} -->\n", f"\n<!-- END {name} -->"
    assert begin in text and end in text, f"markers of {name} missing in docs/operations.md"
    return text.split(begin, 1)[1].split(end, 1)[0]


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    """The cells (without backticks) of the table whose header starts with ``first_cell``."""
    rows: list[list[str]] = []
    inside = False
    for line in markdown.splitlines():
        if line.startswith(f"| {first_cell} |"):
            inside = True
            continue
        if inside and not line.startswith("|"):
            break
        if inside and not line.startswith("|---"):
            rows.append([c.strip().strip("`") for c in line.strip().strip("|").split(" | ")])
    assert rows, f"no table starting with `| {first_cell} |` in docs/operations.md"
    return rows


def test_settings_table_is_the_current_settings_reference() -> None:
    assert between(operations(), "settings_reference()") == settings_reference()


def test_emitter_table_lists_every_variable_the_emitter_reads() -> None:
    rows = table_rows(between(operations(), "emitter settings"), "variable")
    assert sorted(r[0] for r in rows) == sorted(EMITTER_VARIABLES)
    defaults = EmitterConfig(bootstrap_servers="kafka:9092")
    for variable, field, default, _meaning in rows:
        if field == "bootstrap_servers":
            assert default == "required", variable
            continue
        value: Any = defaults
        for part in field.split("."):
            value = getattr(value, part)
        assert default == ("<unset>" if value is None else str(value)), variable


def registered_metrics() -> list[MetricWrapperBase]:
    metrics = SinkMetrics()
    # The sink's own metrics, and the live figures per model version it keeps beside them.
    found = [
        m
        for holder in (metrics, metrics.live)
        for m in vars(holder).values()
        if isinstance(m, MetricWrapperBase)
    ]
    assert {m._name for m in found} == {family.name for family in metrics.registry.collect()}
    return found


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    rows = {r[0]: r[1:] for r in table_rows(operations(), "metric")}
    metrics = registered_metrics()
    assert len(metrics) == 20
    exposed = set()
    for metric in metrics:
        name = f"{metric._name}_total" if metric._type == "counter" else metric._name
        exposed.add(name)
        assert name in rows, f"{name} is not in the metrics table of docs/operations.md"
        kind, labels, _meaning = rows[name]
        assert kind == metric._type, name
        assert labels == (", ".join(metric._labelnames) or "-"), name
    assert set(rows) == exposed, "the doc lists metrics the sink does not register"


def test_exit_codes_are_documented() -> None:
    codes = set(exit_codes.ALL)
    assert codes == {
        value
        for name, value in vars(exit_codes).items()
        if name.startswith("EXIT_") and type(value) is int
    }
    assert codes == {0, 1, 2, 3, 4, 5, 6, 130}
    documented = {int(row[0]) for row in table_rows(operations(), "code")}
    assert documented == codes


def shell_lines(markdown: str) -> list[str]:
    lines: list[str] = []
    inside = False
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            inside = not inside and line.strip() == "```sh"
            continue
        if inside:
            lines.append(line.strip())
    return lines


def sink_argv(line: str) -> list[str] | None:
    """The atlas-sink arguments of a documented command line, or None for other commands."""
    words = shlex.split(line, comments=True)
    if words[:1] == ["atlas-sink"]:
        return words[1:]
    if words[:5] == ["docker", "compose", "run", "--rm", "sink"]:
        return words[5:]
    if words[:2] == ["docker", "run"]:
        image = next(i for i, w in enumerate(words) if w.startswith("servemeta-atlas-sink:"))
        return words[image + 1 :] or ["run"]
    if words[:1] == ["kubectl"] and "atlas-sink" in words:
        return words[words.index("atlas-sink") + 1 :]
    return None


def test_documented_commands_parse() -> None:
    lines = shell_lines(operations())
    commands = set()
    for line in lines:
        argv = sink_argv(line)
        if argv is not None:
            commands.add(command_name(parse_sink_args(argv)))
    assert commands == {"run", "replay", "init-types", "lineage", "dlq list", "dlq redrive"}
    services = set()
    for line in lines:
        words = shlex.split(line, comments=True)
        if words[:3] == ["python", "-m", "local_services"]:
            parsed = local_services_parser().parse_args(words[3:])
            services.add((parsed.service, parsed.action))
    assert {s for s, _ in services} == {"kafka", "registry", "atlas"}
    assert {a for _, a in services} == {"start", "stop", "address", "status"}
