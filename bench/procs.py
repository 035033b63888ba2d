"""Processes the benchmark starts, and what it reads about them from /proc.

Every server the harness runs (nginx, stunnel, control plane, sidecars) goes
through `Processes.start`, so there is exactly one place that stops them: by
PID, in a `finally`, also when the run is interrupted with Ctrl-C. Nothing is
ever stopped by name, because the machine may be running other copies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from trustmesh.loopback_ports import free_port as free_port

# How long a process gets to exit after SIGTERM before it is killed. Sidecars drain
# in-flight requests on SIGTERM; the benchmark has none left when it stops them.
STOP_GRACE_S = 5.0

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpus() -> list[int]:
    """CPUs this process may run on (a container may allow fewer than the machine has)."""
    return sorted(os.sched_getaffinity(0))


def set_affinity(cpu_list: Sequence[int]) -> None:
    """Move this process (the in-process load generators) onto `cpu_list`."""
    os.sched_setaffinity(0, set(cpu_list))


def pinned(cmd: Sequence[str], cpu_list: Sequence[int] | None) -> list[str]:
    """`cmd` prefixed with `taskset -c` when pinning is wanted and possible.

    taskset execs the command, so the PID we get back is the program's own.
    """
    if not cpu_list or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", ",".join(str(c) for c in cpu_list), *cmd]


def rss_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of `pid` from /proc/PID/status in KiB, or None once it has exited.

    VmRSS (the default) is what the targets are stated in; RssAnon is the part that is the
    process's own heap, without the shared libraries it maps (libpython, libcrypto).
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of `pid` (all its threads), or None once it has exited."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces; the fields after its ')' are fixed.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def steal_seconds(cpu_list: Sequence[int]) -> float:
    """CPU time the hypervisor has given away from `cpu_list` since boot (/proc/stat "steal").

    On a shared virtual machine this is the noise that decides a latency tail: while a vCPU
    is descheduled on the host, every request on it waits. 0.0 where the kernel reports none.
    """
    wanted = {f"cpu{c}" for c in cpu_list}
    ticks = 0
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted and len(fields) > 8:
            ticks += int(fields[8])
    return ticks / _CLK_TCK


def wait_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts on host:port; fail early if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s:.0f}s") from None
            time.sleep(0.05)


@dataclass
class Started:
    """One process we started: its name for reports, its Popen, and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class Processes:
    """Owner of every long-running process of one benchmark run; a context manager.

    On exit (normal, exception or KeyboardInterrupt) each process is sent SIGTERM by
    its PID, given `STOP_GRACE_S`, then SIGKILLed; the newest is stopped first so a
    proxy goes before the backend behind it.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Started] = []

    def start(
        self, name: str, cmd: Sequence[str], *, cpu_list: Sequence[int] | None = None, cwd: Path | None = None
    ) -> Started:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                pinned(cmd, cpu_list),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                # Own process group: Ctrl-C in the terminal reaches only the harness, which
                # then stops each child itself, in order, instead of all dying at once.
                start_new_session=True,
            )
        started = Started(name, popen, log)
        self.started.append(started)
        return started

    def stop(self, proc: Started) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=STOP_GRACE_S)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
