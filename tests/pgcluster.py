"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, a random loopback port, stopped after.

Any suite that needs a real PostgreSQL (the store tests, control-plane replica tests) imports
this module (`from tests.pgcluster import running_cluster`, with the repository root on
`sys.path` as the other conftests arrange) instead of expecting a server on the machine:

    with running_cluster() as cluster:
        url = cluster.create_database()        # postgresql://trustmesh:<pw>@127.0.0.1:<port>/<db>
        ...

Why it looks the way it does:
- The server refuses to run as root, so when the tests run as root (CI, containers) initdb and
  pg_ctl run as the `postgres` system user through `runuser`, in a temp dir chowned to it.
  Run as an ordinary user, they run as that user.
- Clients reach the server only over TCP on 127.0.0.1 with a password (SCRAM), the way a
  control-plane replica on another host would; the unix socket (in the temp dir, never in
  /var/run) is trusted and used only by the fixture itself to create databases and roles.
- The cluster runs with fsync off: it is thrown away, and tests should not wait on a disk.
- Missing binaries are an error with instructions, never a skip: a suite that silently skips
  its database tests would pass on a machine that tests nothing.
- Stopping is `pg_ctl stop -m fast`, then SIGKILL of the postmaster by its PID if that fails,
  so a failing test never leaves a server behind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from trustmesh.loopback_ports import free_port

# The role the tests (and the store) log in as. Not a superuser: the store must work with an
# ordinary owner role, as it would against a managed database.
APP_USER = "trustmesh"

# Bounded: a free port can be taken by someone else between our probe and the server's bind.
_START_ATTEMPTS = 3
# Seconds pg_ctl waits for start/stop; a cold start on a loaded 2-core box takes a few seconds.
_PG_CTL_TIMEOUT_S = 60


class PgClusterUnavailable(RuntimeError):
    """The server binaries are missing or the cluster would not start; the message says how to fix it."""


def find_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: `$TRUSTMESH_PG_BIN`, else Debian's newest, else PATH."""
    override = os.environ.get("TRUSTMESH_PG_BIN")
    if override:
        path = Path(override)
        if not (path / "initdb").is_file():
            raise PgClusterUnavailable(f"TRUSTMESH_PG_BIN={override} has no initdb")
        return path
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PgClusterUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH: "
        "install Debian's `postgresql` package (`bash scripts/ci-system-deps.sh` as root does it), "
        "or point TRUSTMESH_PG_BIN at a bin directory"
    )


@dataclass
class PgCluster:
    """One running (or stopped) throwaway cluster. Build it with `running_cluster()`."""

    bin_dir: Path
    base_dir: Path
    port: int
    password: str
    _as_postgres: bool

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def url(self, dbname: str, *, password: bool = True) -> str:
        """The client URL for `dbname` as the app role, over TCP on loopback."""
        auth = f"{APP_USER}:{self.password}" if password else APP_USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the trusted unix socket (autocommit), for set-up only."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database owned by the app role and return its URL (password included)."""
        name = name or f"t_{secrets.token_hex(6)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"test database name {name!r} must be a lowercase identifier")
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(APP_USER))
            )
        return self.url(name)

    def postmaster_pid(self) -> int | None:
        """The server's PID from postmaster.pid, or None when it is not running."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
        except (FileNotFoundError, IndexError):
            return None
        return int(first)

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        return subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, check=False, timeout=_PG_CTL_TIMEOUT_S + 30
        )

    def start(self) -> None:
        """Start the server (again) on `self.port`; raise `PgClusterUnavailable` with the log if it fails."""
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._run(
            str(self.bin_dir / "pg_ctl"),
            "start",
            "-w",
            "-t",
            str(_PG_CTL_TIMEOUT_S),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            options,
        )
        if done.returncode != 0:
            raise PgClusterUnavailable(
                f"pg_ctl start failed (exit {done.returncode}): {done.stderr.strip()}\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """Stop the server: a fast shutdown, or SIGKILL of the postmaster if that does not work."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        done = self._run(
            str(self.bin_dir / "pg_ctl"), "stop", "-m", "fast", "-w", "-t", "30", "-D", str(self.data_dir)
        )
        if done.returncode != 0 and self.postmaster_pid() == pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no server log)"


def _initdb(bin_dir: Path, base_dir: Path, as_postgres: bool) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
    done = subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(base_dir / "data"),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise PgClusterUnavailable(f"initdb failed (exit {done.returncode}): {done.stderr.strip()}")


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM (a CI timeout, `kill`) into KeyboardInterrupt while a cluster runs.

    pg_ctl daemonises the server, so it would outlive a test process killed by SIGTERM's
    default action; as KeyboardInterrupt, pytest unwinds its fixtures and our `finally` stops it.
    Only installed from the main thread and only over the default handler.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def running_cluster() -> Iterator[PgCluster]:
    """Start a fresh cluster with an app role `trustmesh` (random password); stop and delete it afterwards."""
    with _sigterm_unwinds():
        yield from _running_cluster()


def _running_cluster() -> Iterator[PgCluster]:
    bin_dir = find_bin_dir()
    as_postgres = os.geteuid() == 0
    base_dir = Path(tempfile.mkdtemp(prefix="trustmesh-pg-"))
    cluster: PgCluster | None = None
    try:
        (base_dir / "sock").mkdir()
        if as_postgres:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PgClusterUnavailable(
                    "running as root but there is no `postgres` user to run the server as: "
                    "install Debian's `postgresql` package"
                ) from exc
            for path in (base_dir, base_dir / "sock"):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        _initdb(bin_dir, base_dir, as_postgres)
        password = secrets.token_urlsafe(18)
        for attempt in range(_START_ATTEMPTS):
            cluster = PgCluster(bin_dir, base_dir, free_port(), password, as_postgres)
            try:
                cluster.start()
                break
            except PgClusterUnavailable:
                if attempt == _START_ATTEMPTS - 1:
                    raise
        assert cluster is not None
        with cluster.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_USER), sql.Literal(password)
                )
            )
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base_dir, ignore_errors=True)
