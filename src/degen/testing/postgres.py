"""A throwaway PostgreSQL server on 127.0.0.1 for tests (e.g. distributed Optuna tuning).

Uses the Debian ``postgresql`` package's binaries (``/usr/lib/postgresql/<version>/bin``);
``bash scripts/setup.sh --test`` installs them. The cluster lives in a temporary folder,
trusts every local connection, listens on 127.0.0.1 only (plus a unix socket inside that
folder), trades durability for speed (``fsync=off``) and is removed on exit::

    with PostgresServer() as pg:
        engine = sqlalchemy.create_engine(pg.url)

PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` OS user
(through ``runuser``), which the Debian package creates.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from degen.testing.llamacpp import free_port

PG_ROOT = Path("/usr/lib/postgresql")  # Debian: <root>/<version>/bin/initdb
SETUP_HINT = "run `bash scripts/setup.sh --test` to install it"
_SETTINGS = """
# --- degen.testing.postgres: a fast, throwaway, loopback-only test server
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
shared_buffers = 16MB
"""


def find_pg_bindir() -> Path:
    """The ``bin`` folder of the newest PostgreSQL under /usr/lib/postgresql, else the one
    holding ``initdb`` on PATH; RuntimeError when there is none."""

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.parent.name))

    found = sorted(PG_ROOT.glob("*/bin/initdb"), key=version)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl", path=str(Path(on_path).parent)):
        return Path(on_path).parent
    raise RuntimeError(f"PostgreSQL (initdb, pg_ctl) not found; {SETUP_HINT}")


class PostgresServer:
    """A fresh PostgreSQL cluster on 127.0.0.1:<free port> with one database.

    ``url`` is a SQLAlchemy URL (``postgresql+psycopg2://postgres@127.0.0.1:PORT/DB``);
    ``url_for(name)`` gives one for another database, ``create_database(name)`` makes it.
    Use as a context manager, or call ``start()`` and ``stop()``."""

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, database: str = "degen_test", *, timeout: float = 30.0,
                 base_dir: Path | None = None) -> None:
        self.database = database
        self.timeout = timeout
        self.base_dir = base_dir
        self.port = 0
        self.dir: Path | None = None
        self._bindir: Path | None = None
        self._runas: list[str] = []

    # --- public API
    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        if not self.port:
            raise RuntimeError("PostgresServer is not started")
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "PostgresServer is not started"
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "PostgresServer is not started"
        return self.dir / "server.log"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        self._client("createdb", name)
        return self.url_for(name)

    def start(self) -> PostgresServer:
        if self.dir is not None:
            raise RuntimeError("PostgresServer is already started")
        self._bindir = find_pg_bindir()
        self._runas = self._run_as_prefix()
        self.dir = Path(tempfile.mkdtemp(prefix="degen-pg-", dir=self.base_dir))
        atexit.register(self.stop)
        try:
            if self._runas:
                pw = pwd.getpwnam("postgres")
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._server("initdb", "-D", str(self.data_dir), "-U", self.user,
                         "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
            with open(self.data_dir / "postgresql.conf", "a") as f:
                f.write(_SETTINGS.format(sockets=self.dir))
            self._start_on_free_port()
            self._client("createdb", self.database)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server at once (``pg_ctl stop -m immediate``) and remove its folder."""
        atexit.unregister(self.stop)
        if self.dir is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self._server("pg_ctl", "-D", str(self.data_dir), "-m", "immediate",
                             "-w", "-t", "10", "stop")
            except RuntimeError:
                self._kill_postmaster()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        self.port = 0

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- internals
    @staticmethod
    def _run_as_prefix() -> list[str]:
        """``runuser -u postgres --`` as root (PostgreSQL refuses root), else nothing."""
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(f"running as root but there is no `postgres` OS user to run "
                               f"PostgreSQL as; {SETUP_HINT}") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise RuntimeError("running as root but `runuser` (util-linux) is missing; "
                               "PostgreSQL refuses to run as root")
        return [runuser, "-u", "postgres", "--"]

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        wrapped = bool(self._runas) and argv[: len(self._runas)] == self._runas
        tool = Path(argv[len(self._runas) if wrapped else 0]).name
        try:
            proc = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{tool} timed out after {timeout:.0f} s") from e
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {out[-2000:]}")
        return proc

    def _server(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a server-side tool (initdb, pg_ctl) as the server's OS user."""
        assert self._bindir is not None
        return self._run([*self._runas, str(self._bindir / tool), *args],
                         timeout=self.timeout + 15)

    def _client(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a client tool (createdb, psql) over TCP as the ``postgres`` role."""
        assert self._bindir is not None
        return self._run([str(self._bindir / tool), "-h", self.host, "-p", str(self.port),
                          "-U", self.user, *args], timeout=self.timeout)

    def _start_on_free_port(self, attempts: int = 3) -> None:
        """Start on a free port; another process may take the port between the probe and
        the bind, so a failed bind is retried on a new port."""
        for attempt in range(attempts):
            self.port = free_port()
            with open(self.data_dir / "postgresql.conf", "a") as f:
                f.write(f"port = {self.port}\n")  # a later line overrides an earlier one
            try:
                self._server("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path),
                             "-w", "-t", str(int(self.timeout)), "start")
                return
            except RuntimeError as e:
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                if attempt + 1 < attempts and "could not bind" in log:
                    self.log_path.unlink()
                    continue
                raise RuntimeError(f"{e} | server log: {log.strip()[-2000:]}") from None

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)  # the postmaster's "immediate shutdown"
