"""The service as separate OS processes on loopback, to be killed for real: the Temporal dev server
(persisted in a SQLite file, so it can be killed with `kill -9` and started again), workers, the
API and a fake marketplace (whose calls go to a journal file, so they survive its restarts).

Used by the crash tests (tests/test_crashes.py) and `make soak` (devtools/soak.py):

    with ProcessStack(workdir, workers=2, step_seconds=0.5) as stack:
        stack.workers[0].kill9()
        stack.workers[0].start()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from workflows import search

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


@dataclass
class Process:
    """One piece of the stack: started, killed, started again with the same command and files."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    # A line its log prints once it is ready (a worker has no port to wait on).
    ready_text: str | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def pid(self) -> int | None:
        """The running process's id."""
        return self.popen.pid if self.popen is not None and self.alive else None

    @property
    def alive(self) -> bool:
        """Whether it is running."""
        return self.popen is not None and self.popen.poll() is None

    def start(self, wait_seconds: float = 60) -> None:
        """Start it (it must not be running) and wait until it listens on its port, if any."""
        assert not self.alive, f"{self.name} is running already"
        log = self.log_path.open("ab")
        log.write(f"\n--- start {self.starts + 1} of {self.name}\n".encode())
        log.flush()
        # Its own process group, so that kill9 reaches whatever it starts too.
        self.popen = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        if self.port is not None:
            self.wait_listening(wait_seconds)
        if self.ready_text is not None:
            self.wait_ready(wait_seconds)

    def wait_ready(self, wait_seconds: float) -> None:
        """Block until this start's log says `ready_text`."""
        assert self.ready_text is not None
        deadline = time.monotonic() + wait_seconds
        while self.log_path.read_text(errors="replace").count(self.ready_text) < self.starts:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} never became ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def wait_listening(self, wait_seconds: float) -> None:
        """Block until the port accepts connections; fail with the log's tail if it died."""
        assert self.port is not None
        deadline = time.monotonic() + wait_seconds
        while not listening(self.port):
            if not self.alive:
                raise RuntimeError(f"{self.name} exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not listen on {self.port}:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill9(self) -> None:
        """SIGKILL the process group: no cleanup, no goodbye, as a crash."""
        if self.popen is None or not self.alive:
            return
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.popen is None or not self.alive:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def log_tail(self, lines: int = 30) -> str:
        """The end of its log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class ProcessStack:
    """The dev server, `workers` workers, the API and a fake marketplace, each its own process.

    Every worker has its own DATA_DIR; they share the warehouse's SQLite file (WAREHOUSE_DB) and
    Temporal, nothing else.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        workers: int = 1,
        step_seconds: float = 0.5,
        late_call_window: str = "0s",
        env: dict[str, str] | None = None,
    ) -> None:
        """Lay the stack out in `workdir` (logs, databases, the marketplace's journal)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.temporal_port, self.api_port, self.marketplace_port = (
            free_port(),
            free_port(),
            free_port(),
        )
        self.task_queue = f"orders-{self.temporal_port}"
        self.warehouse_db = self.workdir / "warehouse.db"
        self.journal = self.workdir / "marketplace-calls.jsonl"
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("SELLER_", "API_", "TEMPORAL"))
        }
        self.env = base | {
            "TEMPORAL_ADDRESS": f"{HOST}:{self.temporal_port}",
            "TASK_QUEUE": self.task_queue,
            "WAREHOUSE_DB": str(self.warehouse_db),
            "FULFILLMENT_STEP_SECONDS": str(step_seconds),
            "LATE_CALL_WINDOW": late_call_window,
            "MARKETPLACE_ALLOWED_HOSTS": HOST,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        python = sys.executable
        temporal = str(Path(sysconfig.get_path("scripts")) / "temporal")
        self.temporal = Process(
            "temporal",
            [
                temporal,
                "server",
                "start-dev",
                "--ip",
                HOST,
                "--port",
                str(self.temporal_port),
                "--headless",
                "--db-filename",
                str(self.workdir / "temporal.db"),
                "--dynamic-config-value",
                "frontend.enableServerVersionCheck=false",
                "--log-level",
                "error",
                *search.dev_server_flags(),
            ],
            self.env,
            self.workdir / "temporal.log",
            port=self.temporal_port,
        )
        self.workers = [
            Process(
                f"worker-{n}",
                [python, "worker.py"],
                self.env | {"DATA_DIR": str(self.workdir / f"worker-{n}")},
                self.workdir / f"worker-{n}.log",
                ready_text="worker polling task queue",
            )
            for n in range(1, workers + 1)
        ]
        self.api = Process(
            "api",
            [python, "-m", "api"],
            self.env | {"API_PORT": str(self.api_port), "DATA_DIR": str(self.workdir / "api")},
            self.workdir / "api.log",
            port=self.api_port,
        )
        self.marketplace = Process(
            "marketplace",
            [
                python,
                "-m",
                "devtools.fake_marketplace",
                "--port",
                str(self.marketplace_port),
                "--journal",
                str(self.journal),
            ],
            self.env,
            self.workdir / "marketplace.log",
            port=self.marketplace_port,
        )

    @property
    def api_url(self) -> str:
        """The seller API's base URL."""
        return f"http://{HOST}:{self.api_port}"

    @property
    def marketplace_url(self) -> str:
        """The fake marketplace's base URL."""
        return f"http://{HOST}:{self.marketplace_port}"

    @property
    def endpoint(self) -> str:
        """A marketplaceServicesEndpoint as VTEX sends it, on the fake marketplace."""
        return f"{self.marketplace_url}/api/oms?an=crashstore"

    @property
    def temporal_address(self) -> str:
        """Where the dev server's frontend listens."""
        return f"{HOST}:{self.temporal_port}"

    @property
    def processes(self) -> list[Process]:
        """Every piece, in start order."""
        return [self.temporal, self.marketplace, *self.workers, self.api]

    def start(self) -> None:
        """Start every piece, the dev server first."""
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        """Stop every piece, newest first; kill what does not stop."""
        for process in reversed(self.processes):
            process.terminate()

    def logs(self) -> str:
        """The tail of every log, for a failing test's message."""
        return "\n".join(f"== {p.name}\n{p.log_tail()}" for p in self.processes)

    def __enter__(self) -> ProcessStack:
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
