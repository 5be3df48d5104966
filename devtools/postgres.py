"""A throwaway PostgreSQL server for tests and benchmarks: `initdb` in a temporary folder, `pg_ctl`
on a free loopback port, removed afterwards.

    with TemporaryPostgres() as server:
        url = server.create_database("warehouse")  # postgresql+psycopg://postgres@127.0.0.1:.../warehouse

Debian keeps the server's binaries (`initdb`, `pg_ctl`, `postgres`) in
/usr/lib/postgresql/<version>/bin, off PATH; when none is there, `server_binaries` installs Debian's
`postgresql` package with apt (as root). PostgreSQL refuses to run as root, so as root the cluster
belongs to the `postgres` user and every server command runs through `runuser -u postgres --`.

Run by hand: `python -m devtools.postgres` starts one and prints its URL until Ctrl-C.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

from devtools.processes import HOST, free_ports

DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
# Held while PostgreSQL is being installed: one process of the machine installs it.
INSTALL_LOCK = Path(tempfile.gettempdir()) / "seller-connector-postgresql-install.lock"


def server_binaries() -> Path:
    """The folder of `initdb` and `pg_ctl` (the newest version found), installed if missing."""
    found = _find_binaries()
    if found is None:
        # pytest-xdist's workers may all find it missing at once: one installs it while the others
        # wait, then find it (apt's own lock would fail them instead).
        with INSTALL_LOCK.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = _find_binaries()
            if found is None:
                _install_with_apt()
                found = _find_binaries()
    if found is None:
        raise RuntimeError(
            "PostgreSQL's server binaries were not found in /usr/lib/postgresql/*/bin nor on PATH"
            " (install Debian's postgresql package: apt-get install postgresql)"
        )
    return found


def _find_binaries() -> Path | None:
    versions = sorted(
        DEBIAN_BINARIES.glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _install_with_apt() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("PostgreSQL is not installed, and only root can install it with apt")
    print("PostgreSQL's server is missing: installing Debian's postgresql package", flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
    ):
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


class TemporaryPostgres:
    """A PostgreSQL server of its own: trust authentication on loopback, fsync off (a test's data
    need not survive a power cut), and gone once stopped."""

    def __init__(self) -> None:
        self.binaries = server_binaries()
        self.as_root = os.geteuid() == 0
        (self.port,) = free_ports(1)
        self.folder = Path(tempfile.mkdtemp(prefix="warehouse-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        if self.as_root:
            # The server's user must reach its own folder.
            shutil.chown(self.folder, SERVER_USER)
            os.chmod(self.folder, 0o700)

    @property
    def admin_url(self) -> str:
        """The URL of the `postgres` database, as the superuser."""
        return f"postgresql://{SERVER_USER}@{HOST}:{self.port}/postgres"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database`."""
        return f"postgresql+psycopg://{SERVER_USER}@{HOST}:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", SERVER_USER, "--"] if self.as_root else []
        finished = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=120, cwd=self.folder
        )
        if finished.returncode != 0:
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({finished.returncode}):\n"
                f"{finished.stdout}{finished.stderr}{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def start(self) -> None:
        """initdb, then start the server and wait until it takes connections."""
        self._run(
            str(self.binaries / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            SERVER_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-instructions",
        )
        options = (
            f"-c listen_addresses={HOST} -p {self.port} -k {self.folder}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.binaries / "pg_ctl"),
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log),
            "--options",
            options,
            "--wait",
            "--timeout",
            "60",
            "start",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """Create an empty database; its SQLAlchemy URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once and remove its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    str(self.binaries / "pg_ctl"),
                    "--pgdata",
                    str(self.data),
                    "-m",
                    "immediate",
                    "stop",
                )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Start one, print its warehouse URL, stop it on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, _interrupt)
    with TemporaryPostgres() as server:
        print(f"WAREHOUSE_URL={server.create_database('warehouse')}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
