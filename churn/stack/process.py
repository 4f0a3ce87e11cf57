"""A local service run as a child process we own: started, waited for, stopped by PID.

A ``Service`` knows its command, the loopback ports it binds, and how to tell it
is ready. It runs in its own directory ``<run_dir>/<name>/``, and its PID is
written to ``pid`` there, so that ``down`` stops exactly what ``up`` started:
before signalling, the PID's working directory must still be the service's own
directory (a recycled PID is left alone).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says why and what to do."""


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on host:port (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports on ``host``, never handed out before by this process, and below the kernel's
    ephemeral range: a port taken from that range can meanwhile become the source port of some client's
    outgoing connection (Spark's, Prometheus', a Kafka client's), and the service meant to listen on it
    then fails to start. Room is left above each port for the nodes of a 3-broker cluster (+100, +200)."""
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first, last = _port_slice(20000, min(low, 65536) - 1)
    ports: list[int] = []
    while len(ports) < n:
        p = random.randint(first, last - 200)
        if p not in _handed_out and port_is_free(host, p):
            _handed_out.add(p)
            ports.append(p)
    return ports


def _port_slice(first: int, last: int, env=os.environ) -> tuple[int, int]:
    """The part of [first, last] this process draws ports from. The workers of a parallel test run
    (pytest-xdist sets ``PYTEST_XDIST_WORKER`` = ``gw<i>`` and ``PYTEST_XDIST_WORKER_COUNT``, and the
    processes a test starts inherit them) each draw from a slice of their own: a port one worker has
    handed out but whose service has not bound it yet is never handed out by another.

    >>> _port_slice(20000, 32567, env={})
    (20000, 32567)
    >>> _port_slice(20000, 32567, env={"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"})
    (26284, 32567)
    """
    worker, count = env.get("PYTEST_XDIST_WORKER", ""), env.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1):
        return first, last
    count = int(count)
    index = int(worker[2:]) % count
    size = (last - first + 1) // count
    return first + index * size, (first + (index + 1) * size - 1) if index < count - 1 else last


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child is not running
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Service:
    name: str
    run_dir: Path
    host: str
    #: Loopback ports the service binds, by the environment variable that sets each.
    ports: dict[str, int]
    command: Callable[[], list[str]]
    is_ready: Callable[[], bool]
    prepare: Callable[[], None] = lambda: None
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout_s: float = 30.0
    #: Why a running service is unhealthy, or None when it is healthy (or has no such check).
    unhealthy: Callable[[], str | None] = lambda: None
    #: Stop with SIGTERM to the process alone, not its group: the streaming job's Spark JVM is its child,
    #: and a SIGTERM of its own shuts Spark down under the running micro-batch.
    terminate_leader_only: bool = False
    #: The signal that stops it gracefully (PostgreSQL: SIGINT, its fast shutdown; its SIGTERM waits for
    #: every client to disconnect).
    stop_signal: int = signal.SIGTERM
    #: The folder the running process works in, by which ``pid`` knows it is ours (default: ``dir``).
    workdir: Path | None = None

    @property
    def dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The PID of our running process, or None (a stale PID file is ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _alive(pid) and _cwd(pid) == str((self.workdir or self.dir).resolve()):
            return pid
        return None

    def state(self) -> str:
        pid = self.pid()
        if pid is None:
            return "stale pid file" if self.pid_file.exists() else "stopped"
        if not self.is_ready():
            return "starting"
        why = self.unhealthy()
        return "running" if why is None else f"unhealthy: {why}"

    def start(self, timeout_s: float) -> str:
        """Start and wait until ready; returns what was done. Idempotent."""
        return self.wait_started(self.launch(), timeout_s)

    def launch(self) -> subprocess.Popen | int:
        """Start the process unless it runs already, without waiting for it to be ready (the nodes of a
        Kafka quorum are ready only once enough of them run): the new process, or the running one's PID."""
        pid = self.pid()
        if pid is not None:
            return pid
        taken = [(var, port) for var, port in self.ports.items() if not port_is_free(self.host, port)]
        if taken:
            which = ", ".join(f"{port} ({var})" for var, port in taken)
            raise StackError(
                f"{self.name}: port {which} on {self.host} is already in use by another process. "
                f"Stop that process, or pick a free port: e.g. {taken[0][0]}=<port> churn stack up"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        log = open(self.log_file, "ab")
        proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.env},
            cwd=self.dir,
        )
        log.close()
        self.pid_file.write_text(str(proc.pid))
        return proc

    def wait_started(self, launched: subprocess.Popen | int, timeout_s: float) -> str:
        """Wait until what ``launch`` returned is ready; returns what was done."""
        if isinstance(launched, int):
            if self._wait_ready(launched, timeout_s):
                return f"already running (pid {launched})"
            raise StackError(self._failure(f"{self.name} (pid {launched}) is running but not ready"))
        proc = launched
        if not self._wait_ready(proc.pid, timeout_s, proc):
            code = proc.poll()
            self.stop()
            why = f"exited with code {code}" if code is not None else f"not ready after {timeout_s:g} s"
            raise StackError(self._failure(f"{self.name} {why}"))
        return f"started (pid {proc.pid})"

    def _wait_ready(self, pid: int, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            if proc is None and not _alive(pid):
                return False
            if self.is_ready():
                return True
            time.sleep(0.2)
        return False

    def _failure(self, what: str) -> str:
        return f"{what}. Last lines of {self.log_file}:\n{tail(self.log_file)}"

    def stop(self) -> str:
        """``stop_signal`` (SIGTERM) to our process group, SIGKILL after ``stop_timeout_s``. Idempotent."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        try:
            if self.terminate_leader_only:
                os.kill(pid, self.stop_signal)
            else:
                os.killpg(pid, self.stop_signal)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + self.stop_timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        how = "stopped"
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            how = "killed after timeout"
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return f"{how} (pid {pid})"
