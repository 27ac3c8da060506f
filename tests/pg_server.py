"""A throwaway PostgreSQL server for the tests, from the distribution's binaries, without containers.

``initdb`` makes a fresh cluster in a temporary folder; ``postgres`` serves it on 127.0.0.1 at a
free port (its unix socket in that folder too, never in /var/run), with a superuser and password
as the compose stack's ``POSTGRES_USER``/``POSTGRES_PASSWORD``: TCP clients authenticate with
scram-sha-256 as they do there. Postgres refuses to run as root, so under root both run as the
``postgres`` system user (the Debian packages create it). The server is started directly, not
through ``pg_ctl``, so the process id the test holds is the postmaster's; ``stop`` signals that
id (then its process group) and removes the folder, and is safe to call more than once.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 60.0


def find_bindir() -> Path | None:
    """The folder holding ``initdb``, ``postgres`` and ``pg_isready``: on PATH, else Debian's
    ``/usr/lib/postgresql/<major>/bin`` (the newest); None when they are not installed."""
    names = ("initdb", "postgres", "pg_isready")
    on_path = shutil.which("initdb")
    if on_path:
        bindir = Path(os.path.realpath(on_path)).parent  # /usr/local/bin/initdb may be a symlink into Debian's folder
        if all((bindir / n).is_file() for n in names):
            return bindir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if
                        p.split("/")[-2].isdigit() else 0)
    for folder in reversed(candidates):
        if all((Path(folder) / n).is_file() for n in names):
            return Path(folder)
    return None


def run_as() -> pwd.struct_passwd | None:
    """The account the server runs as: the ``postgres`` system user under root, else the current
    user (None under root when there is no ``postgres`` user: then there is nobody to run it)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def unavailable() -> str | None:
    """Why a server cannot be started here (the reason a test skips with), or None when it can."""
    if find_bindir() is None:
        return "PostgreSQL server binaries (initdb, postgres, pg_isready) are not installed"
    if run_as() is None:
        return "running as root and there is no 'postgres' system user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A cluster in a temporary folder, served on 127.0.0.1:``port`` by ``user``/``password``."""

    def __init__(self, user: str = "transferops", password: str = "transferops-test-pw") -> None:
        self.user, self.password = user, password
        self.bindir = find_bindir()
        self.account = run_as()
        if self.bindir is None or self.account is None:
            raise RuntimeError(unavailable())
        self.port = _free_port()
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ addresses
    def url(self, database: str, driver: str = "postgresql") -> str:
        """A SQLAlchemy-style URL of ``database`` (``driver`` e.g. ``postgresql+asyncpg``)."""
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def client_env(self) -> dict[str, str]:
        """Environment for the libpq tools (psql, pg_isready) to reach the server over TCP."""
        return os.environ | {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": self.user,
                             "PGPASSWORD": self.password, "PGDATABASE": "postgres"}

    @property
    def log(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except (OSError, AssertionError):
            return ""

    # ------------------------------------------------------------------ life cycle
    def _as_account(self) -> dict:
        """Popen arguments that run the child as the server's account (a no-op when that is us)."""
        if self.account.pw_uid == os.geteuid():
            return {}
        # Popen switches user in the child after fork, before exec: the pid it returns is the
        # server's own (``runuser`` would fork and leave us holding its pid instead)
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def start(self) -> None:
        """initdb, then ``postgres`` on 127.0.0.1; returns once it accepts connections."""
        # not under pytest's tmp_path: its parents are 0700 root-owned, so the postgres user
        # could not reach a data directory there
        self.root = Path(tempfile.mkdtemp(prefix="transferops-pg-"))
        data, sock = self.root / "data", self.root / "sock"
        sock.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        for p in (self.root, sock, pwfile):
            os.chown(p, self.account.pw_uid, self.account.pw_gid)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "LC_ALL": "C.UTF-8",
               "LANG": "C.UTF-8"}
        res = subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
                              "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
                             env=env, cwd=self.root, capture_output=True, text=True, timeout=120, **self._as_account())
        pwfile.unlink()
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed with {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        with open(self.log, "ab") as log:
            os.chown(self.log, self.account.pw_uid, self.account.pw_gid)
            # durability off: a throwaway cluster, and fsync on a shared disk is most of a migration's time
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
                 "-k", str(sock), "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                **self._as_account())
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections in {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def ready(self) -> bool:
        """Whether the server accepts connections on its TCP port (``pg_isready``)."""
        res = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-t", "2"], env=self.client_env(),
                             capture_output=True, timeout=10)
        return res.returncode == 0

    def psql(self, *args: str, database: str = "postgres") -> str:
        """Run ``psql`` against ``database`` (errors stop it and raise); its output, unaligned, no headers."""
        psql = self.bindir / "psql"
        res = subprocess.run([str(psql) if psql.is_file() else "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-d", database, *args], env=self.client_env(), capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"psql {' '.join(args)} failed with {res.returncode}:\n{res.stderr[-2000:]}")
        return res.stdout

    def stop(self) -> None:
        """Stop the postmaster by its pid (SIGINT: fast shutdown, which ends its backends), then
        SIGKILL its process group after 30 s; remove the cluster's folder."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
