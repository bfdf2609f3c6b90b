"""A throwaway PostgreSQL cluster for tests: initdb into a private temp folder, serve only on a unix socket there,
one fresh database per test. Skips cleanly where PostgreSQL's server binaries or the psycopg driver are missing.

PostgreSQL refuses to run as root; under root the cluster runs as the `postgres` system user (via runuser), which
owns the folder. Clients connect over the socket as the cluster's superuser with trust authentication: nobody but
the folder's owner (and root) can reach a socket in a 0700 folder.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUPERUSER = "safemotion"
SYSTEM_USER = "postgres"  # who runs the cluster when the tests run as root


def find_pg_bin() -> Path | None:
    """The folder with initdb, pg_ctl and pg_dump: initdb's real folder when it is on PATH (following links), else
    the newest /usr/lib/postgresql/*/bin (Debian, Ubuntu)."""
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).resolve().parent / "pg_ctl").is_file():
        return Path(on_path).resolve().parent
    versioned = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
                 if (path.parent / "pg_ctl").is_file()]
    versions = [(int(re.sub(r"\D", "", path.parent.name) or 0), path) for path in versioned]
    return max(versions)[1] if versions else None


@dataclass
class PostgresCluster:
    """A running cluster: where its socket is and how to make databases in it."""

    bin_dir: Path
    root: Path  # private folder holding data/, the socket and the server log
    run_as: list[str]  # command prefix that runs a PostgreSQL binary as the cluster's owner
    _names: Iterator[int] = field(default_factory=itertools.count, init=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def pg(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        """Run a PostgreSQL tool as the cluster's owner; a non-zero exit raises with its output and the server log."""
        result = subprocess.run([*self.run_as, str(self.bin_dir / tool), *args], cwd=self.root,
                                capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}"
                               f"{result.stderr}\n--- server log ---\n{log}")
        return result

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` over the cluster's socket."""
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.root}"

    def create_database(self) -> str:
        """A new empty database's SQLAlchemy URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(host=str(self.root), user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _owner_command() -> tuple[list[str], pwd.struct_passwd | None]:
    """(command prefix, system user) to run PostgreSQL binaries with; skips when running as root without a way out."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    try:
        user = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pytest.skip(f"PostgreSQL refuses to run as root and there is no {SYSTEM_USER!r} user to run it as")
    if runuser is None:
        pytest.skip("PostgreSQL refuses to run as root and runuser is not available to switch user")
    return [runuser, "-u", SYSTEM_USER, "--"], user


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster for the whole test session, stopped and deleted afterwards."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'safemotion[postgres]')")
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql to run these tests")
    run_as, user = _owner_command()
    # not pytest's tmp_path: its parents are private to the test user, and the socket path must stay short (<108)
    root = Path(tempfile.mkdtemp(prefix="safemotion-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = PostgresCluster(bin_dir, root, run_as)
    cluster.pg("initdb", "--pgdata", str(cluster.data_dir), "--username", SUPERUSER, "--auth", "trust",
               "--encoding", "UTF8", "--locale", "C", "--no-sync")
    server_options = (f"-k {root} -c listen_addresses='' -c fsync=off -c full_page_writes=off "
                      f"-c shared_buffers=16MB -c max_connections=60")
    cluster.pg("pg_ctl", "--pgdata", str(cluster.data_dir), "--log", str(cluster.log_file), "--options",
               server_options, "--wait", "--timeout", "150", "start")
    try:
        yield cluster
    finally:
        try:
            cluster.pg("pg_ctl", "--pgdata", str(cluster.data_dir), "--mode", "immediate", "--wait", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The SQLAlchemy URL (postgresql+psycopg://...) of a fresh, empty database."""
    return postgres_cluster.create_database()
