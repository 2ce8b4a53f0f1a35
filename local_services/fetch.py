"""Fetching service binaries with the ordinary `mvn` client, cache markers, and Java lookup.

Artifacts come from whatever repositories the user's Maven is configured for (~/.m2/settings.xml),
and Maven's local repository caches them; our cache dir holds the copied or unpacked trees. A tree
counts as installed only once its marker file exists, and the marker is written last, so an
interrupted copy is redone rather than used half-finished.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_services.process import ServiceError, progress

# Pinned so behaviour does not depend on the plugin version bundled with the local Maven.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

MARKER = ".servemeta-complete"

_DOWNLOADED = re.compile(r"Downloaded from [^:]+: \S+ \((\d+(?:\.\d+)?) (B|kB|MB|GB)")
_UNITS = {"B": 1, "kB": 1_000, "MB": 1_000_000, "GB": 1_000_000_000}


def read_marker(tree: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((tree / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(tree: Path, data: dict[str, Any]) -> None:
    tmp = tree / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(tree / MARKER)


def run_maven(args: Sequence[str], *, what: str, cwd: Path, announce: bool = True) -> None:
    """Run `mvn` in batch mode, printing a short running summary instead of its full output."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            f"expected Maven (`mvn`) on PATH to fetch {what}, found none. Install Maven "
            "(e.g. `apt-get install maven`) and start again."
        )
    if announce:
        progress(f"fetching {what} with Maven (first run only)...")
    cwd.mkdir(parents=True, exist_ok=True)
    began = last_report = time.monotonic()
    files = 0
    size = 0.0
    recent: collections.deque[str] = collections.deque(maxlen=60)
    with subprocess.Popen(
        [mvn, "-B", *args],
        cwd=cwd,  # a directory without pom.xml, so only the pom given with -f is used
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            recent.append(line.rstrip())
            match = _DOWNLOADED.search(line)
            if match:
                files += 1
                size += float(match.group(1)) * _UNITS[match.group(2)]
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                progress(f"  ... {files} files ({size / 1e6:.0f} MB) downloaded so far")
        code = proc.wait()
    if code != 0:
        output = "\n".join(recent)
        raise ServiceError(
            f"Maven failed to fetch {what} (exit code {code}); expected it to download and copy "
            f"the artifacts. Last Maven output:\n{output}\n"
            "Check that Maven can reach its repositories (proxy/mirror settings in "
            "~/.m2/settings.xml) and that the version exists, then start again."
        )
    progress(
        f"fetched {what} in {time.monotonic() - began:.1f}s "
        f"({files} files, {size / 1e6:.0f} MB downloaded; the rest came from ~/.m2)"
    )


# --- Java ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Java:
    executable: str
    major: int


_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@functools.cache
def java_major(executable: str) -> int | None:
    try:
        out = subprocess.run(
            [executable, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # "1.8.0" style for Java 8 and older.
    return int(match.group(2) or 0) if major == 1 else major


def _java_candidates() -> list[str]:
    found: list[str] = []
    for home in (os.environ.get("SERVEMETA_JAVA_HOME"), os.environ.get("JAVA_HOME")):
        if home:
            found.append(str(Path(home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    for pattern in ("/usr/lib/jvm/*/bin/java", "/opt/java/*/bin/java", "/opt/*/bin/java"):
        root, _, rest = pattern.partition("*")
        base = Path(root)
        if base.is_dir():
            found.extend(sorted(str(p) for p in base.glob("*" + rest)))
    unique: dict[str, str] = {}
    for candidate in found:
        real = os.path.realpath(candidate)
        if os.access(real, os.X_OK):
            unique.setdefault(real, candidate)
    return list(unique.values())


def find_java(min_major: int, *, purpose: str) -> Java:
    """The first Java >= min_major: $SERVEMETA_JAVA_HOME, $JAVA_HOME, PATH, then /usr/lib/jvm."""
    seen: list[str] = []
    for candidate in _java_candidates():
        major = java_major(candidate)
        seen.append(f"{candidate} ({major if major is not None else 'unknown version'})")
        if major is not None and major >= min_major:
            return Java(candidate, major)
    listed = ", ".join(seen) or "none"
    raise ServiceError(
        f"{purpose} needs Java {min_major} or newer; found: {listed}. Install one and point "
        "SERVEMETA_JAVA_HOME (or JAVA_HOME) at it."
    )
