"""Apicurio Registry 3.x on 127.0.0.1, serving the Confluent-compatible API.

The Quarkus distribution (io.apicurio:apicurio-registry-app:<v>:tar.gz:all) is fetched with Maven
and unpacked once into ``<cache>/apicurio-registry-<v>``. Storage is Apicurio's default in-memory
H2 database, so every start begins with no schemas. The address is the ccompat base URL, e.g.
``http://127.0.0.1:PORT/apis/ccompat/v7``, ready for
``confluent_kafka.schema_registry.SchemaRegistryClient({"url": address})``.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from local_services.fetch import (
    DEPENDENCY_PLUGIN,
    Java,
    find_java,
    read_marker,
    run_maven,
    write_marker,
)
from local_services.process import (
    LOOPBACK,
    Launch,
    ManagedService,
    ServiceError,
    StartResult,
    Status,
    file_lock,
    free_port,
    progress,
)

# Tried in order unless a version is given: 3.3.x needs Java 21, 3.0.x runs on Java 17.
DEFAULT_VERSIONS = ("3.3.3", "3.0.9")
CCOMPAT_PATH = "/apis/ccompat/v7"
LEGACY_COPY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:2.8"


def _launcher(tree: Path) -> Path:
    """quarkus-run.jar (fast-jar layout, 3.1+) or *-runner.jar (legacy-jar layout, 3.0.x)."""
    for pattern in ("quarkus-run.jar", "*-runner.jar"):
        found = sorted(tree.rglob(pattern))
        if found:
            return found[0]
    raise ServiceError(
        f"expected quarkus-run.jar or *-runner.jar under {tree}, found neither. Delete {tree} "
        "so that it is unpacked again, or pick another version."
    )


def _required_java(tree: Path) -> int:
    """The Java release the registry classes were compiled for (class file major - 44)."""
    highest = 0
    jars = [p for p in tree.rglob("*.jar") if p.name.startswith("apicurio-registry-app")]
    for jar in jars:
        with zipfile.ZipFile(jar) as archive:
            classes = [n for n in archive.namelist() if n.startswith("io/apicurio/registry/")]
            for name in [n for n in classes if n.endswith(".class")]:
                header = archive.read(name)[:8]
                if header[:4] == b"\xca\xfe\xba\xbe":
                    highest = max(highest, int.from_bytes(header[6:8], "big") - 44)
    # Classes may target an older release than the Quarkus runtime underneath, which needs 17.
    return max(highest, 17)


class RegistryService(ManagedService):
    name = "registry"
    title = "Apicurio Registry"

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        version: str | None = None,
        port: int | None = None,
        heap: str = "512m",
        cache_dir: Path | str | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 30.0,
    ) -> None:
        """version: one Apicurio Registry version (default: $SERVEMETA_REGISTRY_VERSION, else the
        first of DEFAULT_VERSIONS that can be fetched and has a suitable Java here)."""
        super().__init__(state_dir, cache_dir, start_timeout, stop_timeout)
        chosen = version or os.environ.get("SERVEMETA_REGISTRY_VERSION")
        self.versions: tuple[str, ...] = (chosen,) if chosen else DEFAULT_VERSIONS
        self.port = port
        self.heap = heap
        self._selected: tuple[str, Path, Java] | None = None

    # -- cache --

    def install_dir(self, version: str) -> Path:
        return self.cache_dir / f"apicurio-registry-{version}"

    def _cached(self, version: str) -> tuple[Path, int] | None:
        tree = self.install_dir(version)
        marker = read_marker(tree) or {}
        launcher, java = marker.get("launcher"), marker.get("java")
        if isinstance(launcher, str) and isinstance(java, int) and (tree / launcher).is_file():
            return tree / launcher, java
        return None

    def _fetch(self, version: str, into: Path) -> None:
        what = f"Apicurio Registry {version} (about 160 MB)"
        args = [
            f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
            f"-DoutputDirectory={into}",
        ]
        try:
            run_maven([f"{DEPENDENCY_PLUGIN}:copy", *args], what=what, cwd=into.parent)
        except ServiceError as first:
            # Plugin 3.x insists on reading the artifact's pom and its parent; for 3.0.9 that
            # parent pom cannot be resolved. 2.8 copies the file without reading any pom.
            progress(f"retrying with {LEGACY_COPY_PLUGIN}, which does not need the artifact's pom")
            try:
                run_maven(
                    [f"{LEGACY_COPY_PLUGIN}:copy", *args],
                    what=what,
                    cwd=into.parent,
                    announce=False,
                )
            except ServiceError as second:
                raise ServiceError(f"{first}\n\nThe retry failed too:\n{second}") from second

    def _install_one(self, version: str) -> tuple[bool, Path, int]:
        """(was cached, launcher jar, required Java) for one version, fetching it if needed."""
        tree = self.install_dir(version)
        cached = self._cached(version)
        if cached is not None:
            return True, *cached
        with file_lock(self.cache_dir / f"apicurio-registry-{version}.lock"):
            cached = self._cached(version)
            if cached is not None:  # another process finished it while we waited
                return True, *cached
            downloads = self.cache_dir / "downloads"
            shutil.rmtree(downloads / version, ignore_errors=True)
            self._fetch(version, downloads / version)
            archives = sorted((downloads / version).glob("*.tar.gz"))
            if not archives:
                raise ServiceError(
                    f"Maven finished but put no .tar.gz into {downloads / version}; expected "
                    f"apicurio-registry-app-{version}-all.tar.gz. Start again; if it persists, "
                    "run the same `mvn dependency:copy` by hand to see why."
                )
            progress(f"unpacking {archives[0].name} into {tree}...")
            staging = tree.with_name(tree.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            with tarfile.open(archives[0]) as archive:
                archive.extractall(staging, filter="data")
            shutil.rmtree(tree, ignore_errors=True)
            staging.rename(tree)
            # Maven's local repository keeps the archive; a second copy here would only cost space.
            shutil.rmtree(downloads / version, ignore_errors=True)
            launcher = _launcher(tree)
            java = _required_java(tree)
            write_marker(
                tree,
                {"version": version, "launcher": str(launcher.relative_to(tree)), "java": java},
            )
            return False, launcher, java

    def install(self) -> bool:
        problems: list[str] = []
        fetched = False
        for version in self.versions:
            try:
                cached, launcher, needs = self._install_one(version)
                fetched = fetched or not cached
                java = find_java(needs, purpose=f"Apicurio Registry {version}")
            except ServiceError as exc:
                problems.append(f"{version}: {exc}")
                if version != self.versions[-1]:
                    reason = str(exc).splitlines()[0]
                    progress(
                        f"Apicurio Registry {version} is unusable here ({reason}); "
                        "trying the next version"
                    )
                continue
            self._selected = (version, launcher, java)
            return not fetched
        raise ServiceError(
            "no Apicurio Registry version could be installed; expected one of "
            f"{', '.join(self.versions)} to be fetched and matched with a Java. Reasons:\n"
            + "\n".join(problems)
        )

    @property
    def version(self) -> str | None:
        """The version chosen by the last install(), if any."""
        return self._selected[0] if self._selected else None

    # -- run --

    @property
    def log_files(self) -> tuple[Path, ...]:
        # Quarkus logs to the console, so the console log is the server log.
        return (self.console_log,)

    def prepare(self) -> Launch:
        if self._selected is None:
            raise ServiceError("RegistryService.prepare() called before install()")
        version, launcher, java = self._selected
        port = self.port or free_port()
        management_port = free_port(exclude={port})
        data = self.state_dir / "registry-data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            java.executable,
            f"-Xmx{self.heap}",
            self.identity,
            f"-Dquarkus.http.host={LOOPBACK}",
            f"-Dquarkus.http.port={port}",
            # 3.1+ also opens a health/metrics interface on 0.0.0.0:9000 unless told otherwise:
            # that would listen beyond loopback and clash between two registries.
            f"-Dquarkus.management.host={LOOPBACK}",
            f"-Dquarkus.management.port={management_port}",
            f"-Dapicurio.storage.snapshot.location={data}",
            f"-Djava.io.tmpdir={data}",
            "-jar",
            str(launcher),
        ]
        progress(f"starting Apicurio Registry {version} with Java {java.major}")
        return Launch(
            argv=argv,
            address=f"http://{LOOPBACK}:{port}{CCOMPAT_PATH}",
            ports=(port, management_port),
        )

    def readiness_problem(self, address: str) -> str | None:
        url = f"{address}/subjects"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                code = int(response.status)
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return f"GET {url} failed: {reason}"
        return None if code == 200 else f"GET {url} returned HTTP {code}, expected 200"


def start(
    state_dir: Path | str | None = None,
    *,
    version: str | None = None,
    start_timeout: float = 120.0,
) -> StartResult:
    return RegistryService(state_dir, version=version, start_timeout=start_timeout).start()


def stop(state_dir: Path | str | None = None) -> bool:
    return RegistryService(state_dir).stop()


def address(state_dir: Path | str | None = None) -> str | None:
    return RegistryService(state_dir).address()


def status(state_dir: Path | str | None = None) -> Status:
    return RegistryService(state_dir).status()
