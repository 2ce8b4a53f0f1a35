"""Process, port, readiness and log helpers shared by the local service launchers.

Every service keeps its runtime state in one directory: ``<name>.pid``, ``<name>.address``,
``<name>.lock`` and ``logs/``. File names carry the service name so that one directory
(for instance ``$SERVEMETA_STATE_DIR``) can hold several services without clashes.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

TAIL_LINES = 60


class ServiceError(RuntimeError):
    """A local service could not be fetched, started or stopped; the message says what to do."""


def progress(message: str) -> None:
    # stdout is reserved for the address, so that `ADDR=$(python -m local_services ...)` works.
    print(message, file=sys.stderr, flush=True)


# --- locations -------------------------------------------------------------------------------


def repo_root() -> Path | None:
    """The source checkout holding this package, or None when installed elsewhere."""
    candidate = Path(__file__).resolve().parent.parent
    return candidate if (candidate / "pyproject.toml").is_file() else None


def default_state_dir(service: str) -> Path:
    env = os.environ.get("SERVEMETA_STATE_DIR")
    if env:
        return Path(env).expanduser()
    return (repo_root() or Path.cwd()) / ".run" / service


def default_cache_dir() -> Path:
    env = os.environ.get("SERVEMETA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "servemeta"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise work on shared files (cache installs, one state dir) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- ports -----------------------------------------------------------------------------------

LOOPBACK = "127.0.0.1"


def free_port(exclude: Collection[int] = ()) -> int:
    """A port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise ServiceError(f"could not find a free port on {LOOPBACK} outside {sorted(exclude)}")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too, so a lingering TIME_WAIT does not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- processes -------------------------------------------------------------------------------


# Servers started by this interpreter. Holding their Popen objects keeps Python from warning
# "subprocess is still running" when a launcher object goes away while its server keeps running.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _release(pid: int) -> None:
    """Collect the exit status of a server of ours that is gone (possibly still a zombie)."""
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


def _reap(pid: int) -> bool:
    """True when pid is a child of ours that has exited (its zombie is collected here)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is not None
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def pid_alive(pid: int) -> bool:
    if _reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie still answers kill(0) but is no longer a server.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] != "Z"


def _group_alive(pgid: int) -> bool:
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    # Orphaned members that already exited linger as zombies until init reaps them, which in a
    # container may be never; they hold no resources, so only live members count.
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def cmdline_has(pid: int, token: str) -> bool:
    """Whether pid's command line contains token; guards against a recycled pid in a pid file."""
    proc = Path("/proc")
    if not proc.is_dir():
        return pid_alive(pid)  # no /proc (macOS): the pid check is all we have
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    return token.encode() in raw.split(b"\0")


def memory_kib(pid: int) -> tuple[int | None, int | None]:
    """(current RSS, peak RSS) of pid in KiB from /proc, or Nones where unavailable."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values.get("VmRSS"), values.get("VmHWM")


def terminate_group(pgid: int, *, timeout: float, what: str) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout`, and wait until it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
            # A stopped (SIGSTOP, Ctrl-Z) server only acts on SIGTERM once continued.
            os.killpg(pgid, signal.SIGCONT)
        except ProcessLookupError:
            _release(pgid)
            return
        deadline = time.monotonic() + wait
        delay = 0.05
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                _release(pgid)
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        if sig == signal.SIGTERM:
            progress(
                f"{what} (process group {pgid}) ignored SIGTERM for {timeout:.0f}s; killing it"
            )
    raise ServiceError(
        f"{what} (process group {pgid}) is still alive 10s after SIGKILL; expected it to exit. "
        f"Inspect it with `ps -g {pgid}` and kill it by hand."
    )


# --- logs ------------------------------------------------------------------------------------


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            # Logs can be large; the last 256 KiB hold far more than `lines` lines.
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def describe_logs(paths: Sequence[Path], lines: int = TAIL_LINES) -> str:
    parts = []
    for path in paths:
        content = tail(path, lines)
        if content:
            parts.append(f"--- last {len(content)} lines of {path} ---")
            parts.extend(content)
    if not parts:
        listed = ", ".join(str(p) for p in paths)
        parts.append(f"(no log output was written to {listed})")
    return "\n".join(parts)


# --- service lifecycle -----------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """How to run one instance: argv (which must contain the identity token), its address and
    the ports it will listen on."""

    argv: list[str]
    address: str
    ports: tuple[int, ...]
    env: dict[str, str] | None = None


@dataclass(frozen=True)
class StartResult:
    service: str
    address: str
    pid: int
    state_dir: Path
    already_running: bool
    # True when no download or unpack happened: the cache already held everything.
    used_cache: bool
    install_seconds: float
    startup_seconds: float
    logs: tuple[Path, ...]


@dataclass(frozen=True)
class Status:
    service: str
    state: Literal["running", "unhealthy", "stopped"]
    address: str | None
    pid: int | None
    state_dir: Path
    logs: tuple[Path, ...]
    detail: str | None = None
    rss_kib: int | None = None
    peak_rss_kib: int | None = None

    def describe(self) -> str:
        if self.state == "stopped":
            return f"{self.service}: stopped (state dir {self.state_dir})"
        line = f"{self.service}: {self.state} at {self.address} (pid {self.pid}"
        if self.rss_kib is not None:
            line += f", rss {self.rss_kib // 1024} MiB, peak {(self.peak_rss_kib or 0) // 1024} MiB"
        line += f"); logs in {self.state_dir / 'logs'}"
        if self.detail:
            line += f"; {self.detail}"
        return line


class ManagedService(abc.ABC):
    """One server process started in its own process group, tracked by files in a state dir."""

    name: ClassVar[str]
    title: ClassVar[str]

    def __init__(
        self,
        state_dir: Path | str | None,
        cache_dir: Path | str | None,
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        chosen = Path(state_dir).expanduser() if state_dir else default_state_dir(self.name)
        self.state_dir = chosen.absolute()
        cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.cache_dir = cache.absolute()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

    # -- what each service provides --

    @abc.abstractmethod
    def install(self) -> bool:
        """Make binaries available in the cache; True when they already were (no Maven run)."""

    @abc.abstractmethod
    def prepare(self) -> Launch:
        """Write configuration for a fresh run in the state dir and say how to launch it."""

    @abc.abstractmethod
    def readiness_problem(self, address: str) -> str | None:
        """None when the server answers at address, else what came instead."""

    @property
    @abc.abstractmethod
    def log_files(self) -> tuple[Path, ...]:
        """Log files worth showing when something goes wrong, most useful last."""

    # -- state files --

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def console_log(self) -> Path:
        return self.log_dir / f"{self.name}-console.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def address_file(self) -> Path:
        return self.state_dir / f"{self.name}.address"

    @property
    def identity(self) -> str:
        """A JVM flag that marks our process, so a recycled pid is never mistaken for it."""
        return f"-Dservemeta.service={self.name}@{self.state_dir}"

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _running_pid(self) -> int | None:
        raw = self._read(self.pid_file)
        if raw is None or not raw.isdigit():
            return None
        pid = int(raw)
        if pid_alive(pid) and cmdline_has(pid, self.identity):
            return pid
        return None

    def _forget(self) -> None:
        for path in (self.pid_file, self.address_file):
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.state_dir / f"{self.name}.lock"):
            yield

    # -- public operations --

    def address(self) -> str | None:
        """The address of the running server, or None when it is not running."""
        if self._running_pid() is None:
            return None
        return self._read(self.address_file)

    def status(self) -> Status:
        pid = self._running_pid()
        if pid is None:
            return Status(self.name, "stopped", None, None, self.state_dir, self.log_files)
        address = self._read(self.address_file)
        problem = self.readiness_problem(address) if address else "no address recorded yet"
        rss, peak = memory_kib(pid)
        return Status(
            self.name,
            "unhealthy" if problem else "running",
            address,
            pid,
            self.state_dir,
            self.log_files,
            detail=problem,
            rss_kib=rss,
            peak_rss_kib=peak,
        )

    def start(self) -> StartResult:
        with self._locked():
            pid = self._running_pid()
            if pid is not None:
                address = self._read(self.address_file)
                problem = self.readiness_problem(address) if address else "no address recorded"
                if address and problem is None:
                    return StartResult(
                        service=self.name,
                        address=address,
                        pid=pid,
                        state_dir=self.state_dir,
                        already_running=True,
                        used_cache=True,
                        install_seconds=0.0,
                        startup_seconds=0.0,
                        logs=self.log_files,
                    )
                progress(
                    f"{self.title} (pid {pid}) is running but not ready ({problem}); restarting"
                )
                self._stop_locked()
            self._forget()
            began = time.monotonic()
            used_cache = self.install()
            installed = time.monotonic()
            # Logs of the previous run are replaced; a failed start keeps its own until then.
            # Only ours: the directory may be shared with the other service.
            self.log_dir.mkdir(parents=True, exist_ok=True)
            for old_log in self.log_dir.glob(f"{self.name}-*"):
                old_log.unlink(missing_ok=True)
            launch = self.prepare()
            if self.identity not in launch.argv:
                raise AssertionError(f"{type(self).__name__}.prepare() left out {self.identity}")
            # Otherwise the readiness probe could be answered by whatever already holds the port.
            for port in launch.ports:
                if not port_is_free(port):
                    raise ServiceError(
                        f"port {port} on {LOOPBACK} is already in use; expected it free for "
                        f"{self.title}. Stop whatever listens there (`ss -ltnp 'sport = :{port}'`"
                        ") or choose another port."
                    )
            with self.console_log.open("wb") as console:
                proc = subprocess.Popen(
                    launch.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    cwd=self.state_dir,
                    env=launch.env,
                    # Own process group: stop() can kill everything it spawned, and Ctrl-C in
                    # the launching shell does not reach a server meant to outlive it.
                    start_new_session=True,
                )
            _children[proc.pid] = proc
            self.pid_file.write_text(f"{proc.pid}\n")
            try:
                self._wait_ready(proc, launch.address)
            except BaseException:
                # Also on KeyboardInterrupt: never leave a half-started server behind.
                with contextlib.suppress(ServiceError):
                    terminate_group(proc.pid, timeout=5.0, what=self.title)
                self._forget()
                raise
            self.address_file.write_text(f"{launch.address}\n")
            return StartResult(
                service=self.name,
                address=launch.address,
                pid=proc.pid,
                state_dir=self.state_dir,
                already_running=False,
                used_cache=used_cache,
                install_seconds=installed - began,
                startup_seconds=time.monotonic() - installed,
                logs=self.log_files,
            )

    def stop(self) -> bool:
        """Stop the server; True when one was running."""
        with self._locked():
            return self._stop_locked()

    def _stop_locked(self) -> bool:
        pid = self._running_pid()
        if pid is not None:
            terminate_group(pid, timeout=self.stop_timeout, what=self.title)
        self._forget()
        return pid is not None

    def _wait_ready(self, proc: subprocess.Popen[bytes], address: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.1
        while True:
            code = proc.poll()
            if code is not None:
                raise ServiceError(
                    f"{self.title} exited with code {code} while starting; expected it to keep "
                    f"running and answer at {address}.\n{describe_logs(self.log_files)}\n"
                    f"Logs are kept in {self.log_dir}; fix the cause shown above and start again."
                )
            problem = self.readiness_problem(address) or ""
            if not problem:
                return
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{self.title} did not become ready within {self.start_timeout:.0f}s; "
                    f"expected it to answer at {address}, last probe: {problem}. "
                    f"It was killed.\n{describe_logs(self.log_files)}\n"
                    f"Logs are kept in {self.log_dir}. If the log shows slow but healthy "
                    "progress, raise the start timeout (--timeout); otherwise fix the cause."
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 1.0)
