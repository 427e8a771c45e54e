"""Real servers for the integration tests: a throwaway PostgreSQL cluster and an MLflow tracking server on it.

Both listen on 127.0.0.1 only and are stopped by the fixtures that start them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    """Poll check() until true; the timeout only bounds a broken start."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.2)


def postgres_bin() -> pathlib.Path | None:
    found = shutil.which("initdb")
    if found:
        return pathlib.Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return pathlib.Path(candidates[-1]).parent if candidates else None


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (run as the `postgres` user when the tests run as root)."""

    def __init__(self, bindir: pathlib.Path):
        self.bindir, self.port = bindir, free_port()
        self.user, self.database, self.password = "mlflow", "mlflow", secrets.token_hex(12)
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="kubetrain-pg-"))
        self.as_user = None
        if os.geteuid() == 0:  # postgres refuses to run as root
            self.as_user = pwd.getpwnam("postgres")
            os.chown(self.dir, self.as_user.pw_uid, self.as_user.pw_gid)
        self.proc: subprocess.Popen | None = None

    def _demote(self):
        if self.as_user:
            os.setgid(self.as_user.pw_gid)
            os.setuid(self.as_user.pw_uid)

    def start(self) -> Postgres:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            os.chown(pwfile, self.as_user.pw_uid, self.as_user.pw_gid)
        subprocess.run(
            [self.bindir / "initdb", "-D", self.dir / "data", "-U", self.user, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
            check=True, capture_output=True, preexec_fn=self._demote,
        )  # fmt: skip
        self.proc = subprocess.Popen(
            [self.bindir / "postgres", "-D", self.dir / "data", "-c", "listen_addresses=127.0.0.1",
             "-p", str(self.port), "-c", f"unix_socket_directories={self.dir}", "-c", "fsync=off"],
            stdout=(self.dir / "postgres.log").open("w"), stderr=subprocess.STDOUT, preexec_fn=self._demote,
        )  # fmt: skip
        wait_until(self._accepts, 60, "PostgreSQL accepts connections")
        self.query(f"CREATE DATABASE {self.database}", dbname="postgres")
        return self

    def _accepts(self) -> bool:
        import psycopg

        assert self.proc.poll() is None, (self.dir / "postgres.log").read_text()[-2000:]
        try:
            psycopg.connect(self.dsn("postgres")).close()
            return True
        except psycopg.OperationalError:
            return False

    def dsn(self, dbname: str | None = None) -> str:
        db = dbname or self.database
        return f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} dbname={db}"

    def uri(self) -> str:
        # the driver named, as the chart does: SQLAlchemy 2.1 defaults postgresql:// to psycopg 3 anyway
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def query(self, sql: str, dbname: str | None = None) -> list[tuple]:
        import psycopg

        # autocommit: CREATE DATABASE cannot run in a transaction
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


class MlflowServer:
    """`mlflow server` with the chart's flags (--serve-artifacts to a local destination), stoppable and restartable."""

    def __init__(self, backend_uri: str, workdir: pathlib.Path):
        self.backend_uri, self.workdir, self.port = backend_uri, workdir, free_port()
        self.artifacts = workdir / "mlartifacts"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        mlflow = pathlib.Path(sys.executable).parent / "mlflow"
        self.proc = subprocess.Popen(
            [mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", self.backend_uri, "--serve-artifacts",
             "--artifacts-destination", str(self.artifacts)],
            cwd=self.workdir, stdout=(self.workdir / "mlflow.log").open("a"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_until(self.healthy, 180, "the MLflow server answers /health")
        return self

    def healthy(self) -> bool:
        assert self.proc.poll() is None, (self.workdir / "mlflow.log").read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A started PostgreSQL for a fixture; skips when Debian's postgresql is not installed."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    pg = Postgres(bindir)
    try:
        yield pg.start()
    finally:
        pg.stop()
