"""The service as separate OS processes on loopback, to be killed for real: the Temporal dev server
(persisted in a SQLite file, so it can be killed with `kill -9` and started again), workers, the
API and a fake marketplace (whose calls go to a journal file, so they survive its restarts).

Used by the crash tests (tests/test_crashes.py) and `make soak` (devtools/soak.py):

    with ProcessStack(workdir, workers=2, step_seconds=0.5) as stack:
        stack.workers[0].kill9()
        stack.workers[0].restart()

Each process runs in its own session (process group), logs to `<workdir>/<name>.log`, and is
stopped when the block exits, whatever happened inside it.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from config import Settings
from workflows import search

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nothing listens on right now, none handed out before by this
    process (until its whole slice has been walked).

    They are taken below the kernel's ephemeral range, where no outgoing connection (ours, a
    dev server's, another test run's) can take one between this choice and its server's bind;
    under pytest-xdist each worker process draws from a slice of its own, so two workers never
    choose the same port. Within a process the slice is walked in order from a random start:
    a port chosen but not yet listened on (a stack still starting in another thread, as the
    README's sessions do) is never chosen again, which a port that is merely free could be.
    """
    low, high = _port_slice()
    chosen: list[int] = []
    with _cursor_lock:
        global _cursor
        if _cursor is None or not low <= _cursor < high:
            _cursor = random.randrange(low, high)
        for _ in range(high - low):
            if len(chosen) == count:
                break
            port, _cursor = _cursor, low + (_cursor + 1 - low) % (high - low)
            with socket.socket() as probe:
                try:
                    probe.bind((HOST, port))
                except OSError:
                    continue
            chosen.append(port)
    if len(chosen) < count:
        raise RuntimeError(f"fewer than {count} free ports in {low}-{high - 1}")
    return chosen


# The next port `free_ports` tries in this process's slice.
_cursor: int | None = None
_cursor_lock = threading.Lock()

# Ports from here up to the ephemeral range are handed out by `free_ports`.
FIRST_CHOSEN_PORT = 10_000


def _port_slice() -> tuple[int, int]:
    """[low, high) of the ports this process may choose: below the ephemeral range (Linux says
    where it starts; 32768 otherwise), this pytest-xdist worker's share of it."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32_768
    low, high = FIRST_CHOSEN_PORT, max(ephemeral, FIRST_CHOSEN_PORT + 1_000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1... under pytest-xdist
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and workers > 1:
        share = (high - low) // workers
        low += int(worker[2:]) * share
        high = low + share
    return low, high


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


def healthy(url: str) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of that process group still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # The group id is someone else's now.
        return False
    return True


def clean_environment() -> dict[str, str]:
    """This process's environment without any of the service's settings, so that nothing set in
    the caller's shell (a task queue, an encryption key, a metrics port) leaks into the stack."""
    names = {name.upper() for name in Settings.model_fields}
    return {key: value for key, value in os.environ.items() if key.upper() not in names}


@dataclass
class Process:
    """One piece of the stack: started, killed, started again with the same command and files."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    # Answers 200 once the process is ready (e.g. the API's /healthz, which reaches Temporal).
    health_url: str | None = None
    # A line its log prints once it is ready (a worker has no port to wait on).
    ready_text: str | None = None
    # The code it runs: the repository's, or another version's tree (tests/test_upgrade.py).
    cwd: Path = ROOT
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0
    # The process group of every start (its pid: each start is a session leader).
    groups: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        """The running process's id."""
        return self.popen.pid if self.popen is not None and self.alive else None

    @property
    def alive(self) -> bool:
        """Whether it is running."""
        return self.popen is not None and self.popen.poll() is None

    def start(self, wait_seconds: float = 60) -> None:
        """Start it (it must not be running) and wait until it is ready."""
        self.spawn()
        self.wait_ready(wait_seconds)

    def spawn(self) -> None:
        """Start it without waiting (it must not be running)."""
        assert not self.alive, f"{self.name} is running already"
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start {self.starts + 1} of {self.name}\n".encode())
            log.flush()
            # Its own session and process group, so that kill9 reaches whatever it starts too,
            # and a Ctrl-C in the caller's terminal does not reach it behind our back.
            self.popen = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self.groups.append(self.popen.pid)

    def wait_ready(self, wait_seconds: float = 60) -> None:
        """Block until it listens on its port, answers its health URL and has logged its ready
        line (whichever it has); fail with its log's tail if it died or took too long."""
        deadline = time.monotonic() + wait_seconds
        checks = [
            (self.port is not None, lambda: listening(self.port or 0), "listen"),
            (self.health_url is not None, lambda: healthy(self.health_url or ""), "answer 200"),
            (self.ready_text is not None, self._logged_ready, "log that it is ready"),
        ]
        for wanted, check, what in checks:
            while wanted and not check():
                if not self.alive:
                    raise RuntimeError(f"{self.name} exited while starting:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not {what}:\n{self.log_tail()}")
                time.sleep(0.1)

    def _logged_ready(self) -> bool:
        assert self.ready_text is not None
        return self.log_path.read_text(errors="replace").count(self.ready_text) >= self.starts

    def kill9(self) -> None:
        """SIGKILL the process group: no cleanup, no goodbye, as a crash."""
        if self.popen is None or not self.alive:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 15) -> None:
        """SIGTERM the process group, then SIGKILL after `timeout`."""
        if self.popen is None or not self.alive:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill9()

    def restart(self, wait_seconds: float = 60) -> None:
        """Start it again with the same command, ports and files (stopped with SIGTERM first if
        it still runs; after a `kill9`, just started)."""
        self.terminate()
        self.start(wait_seconds)

    def log_tail(self, lines: int = 30) -> str:
        """The end of its log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class ProcessStack:
    """The dev server, `workers` workers, the API and a fake marketplace, each its own process.

    Every process has its own DATA_DIR; the workers share the warehouse's database (a SQLite file,
    WAREHOUSE_DB, or WAREHOUSE_URL), so the stock is one, and Temporal, nothing else.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        workers: int = 1,
        step_seconds: float = 0.5,
        late_call_window: str = "0s",
        warehouse_url: str = "",
        env: dict[str, str] | None = None,
        worker_env: dict[str, str] | None = None,
        temporal_db: bool = True,
    ) -> None:
        """Lay the stack out in `workdir` (logs, databases, the marketplace's journal).

        Args:
            warehouse_url: The warehouse's database (WAREHOUSE_URL), e.g. a PostgreSQL one;
                empty for a SQLite file in `workdir`.
            env: Adds or overrides settings of every process (e.g. UPDATE_TIMEOUT_SECONDS).
            worker_env: Adds or overrides settings of the workers only (e.g.
                WORKER_MAX_CONCURRENT_ACTIVITIES); `add_worker` takes more per worker.
            temporal_db: Whether the dev server keeps its state in a SQLite file in `workdir`
                (it survives `kill -9`, each write on disk) or in memory (lost with the process).
        """
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Every port chosen at once, the dev server's HTTP API and metrics ones too: left to pick
        # its own, the dev server once took the marketplace's (chosen, not yet listened on).
        (
            self.temporal_port,
            self.api_port,
            self.ops_port,
            self.marketplace_port,
            temporal_http_port,
            temporal_metrics_port,
        ) = free_ports(6)
        self.task_queue = f"orders-{self.temporal_port}"
        self.warehouse_db = self.workdir / "warehouse.db"
        # What a SimulatedWarehouse of the test opens to see the workers' stock.
        self.warehouse_store: str | Path = warehouse_url or self.warehouse_db
        self.journal = self.workdir / "marketplace-calls.jsonl"
        self.env = clean_environment() | {
            "TEMPORAL_ADDRESS": self.temporal_address,
            "TASK_QUEUE": self.task_queue,
            "WAREHOUSE_DB": str(self.warehouse_db),
            "WAREHOUSE_URL": warehouse_url,
            "FULFILLMENT_STEP_SECONDS": str(step_seconds),
            "LATE_CALL_WINDOW": late_call_window,
            "MARKETPLACE_ALLOWED_HOSTS": HOST,
            # Black-box: any SKU the tests order is sold, from 1,000 units.
            "DEFAULT_STOCK": "1000",
            # Orders end `invoiced` (what the crash tests and the soak check); the parcel's
            # journey is tests/test_delivery.py's.
            "TRACKING_POLL_INTERVAL": "0s",
            "API_HOST": HOST,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.worker_env = dict(worker_env or {})
        # Processes added after construction (`add_worker`, `add_process`), and workers stopped for
        # good (`retire_workers`): still checked by `leftovers`.
        self.extras: list[Process] = []
        self.retired: list[Process] = []
        self._worker_count = 0
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
                "--http-port",
                str(temporal_http_port),
                "--metrics-port",
                str(temporal_metrics_port),
                "--headless",
                *(["--db-filename", str(self.workdir / "temporal.db")] if temporal_db else []),
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
        self.workers: list[Process] = []
        for _ in range(workers):
            self.workers.append(self._new_worker())
        self.api = Process(
            "api",
            [python, "-m", "api"],
            self.env
            | {
                "API_PORT": str(self.api_port),
                "OPS_HOST": HOST,
                "OPS_PORT": str(self.ops_port),
                "DATA_DIR": str(self.workdir / "api"),
            },
            self.workdir / "api.log",
            port=self.api_port,
            health_url=f"{self.api_url}/healthz",
        )
        self.marketplace = Process(
            "marketplace",
            [
                python,
                "-m",
                "devtools.fake_marketplace",
                "--host",
                HOST,
                "--port",
                str(self.marketplace_port),
                "--journal",
                str(self.journal),
            ],
            self.env,
            self.workdir / "marketplace.log",
            port=self.marketplace_port,
            health_url=f"{self.marketplace_url}/healthz",
        )

    def _new_worker(self, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Process:
        self._worker_count += 1
        n = self._worker_count
        return Process(
            f"worker-{n}",
            [sys.executable, "worker.py"],
            self.env
            | self.worker_env
            | {"DATA_DIR": str(self.workdir / f"worker-{n}")}
            | (env or {}),
            self.workdir / f"worker-{n}.log",
            ready_text="worker polling task queue",
            cwd=cwd,
        )

    def add_worker(
        self, env: dict[str, str] | None = None, *, start: bool = True, cwd: Path = ROOT
    ) -> Process:
        """One more worker (named after the ones before: worker-3, worker-4...), with `env` on top
        of the stack's settings, running the code in `cwd`; started (and waited for) unless
        `start` is false."""
        worker = self._new_worker(env, cwd)
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def retire_workers(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL) and forget them: the next `add_worker` starts
        a fresh set on the same task queue."""
        for worker in self.workers:
            worker.terminate()
        self.retired.extend(self.workers)
        self.workers = []

    def add_process(
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        *,
        ready_text: str | None = None,
        start: bool = True,
    ) -> Process:
        """Another process of the stack (e.g. a benchmark's own worker), in the repository's
        folder with the stack's settings and `env`; stopped with the stack."""
        process = Process(
            name,
            command,
            self.env | (env or {}),
            self.workdir / f"{name}.log",
            ready_text=ready_text,
        )
        self.extras.append(process)
        if start:
            process.start()
        return process

    @property
    def api_url(self) -> str:
        """The seller API's base URL."""
        return f"http://{HOST}:{self.api_port}"

    @property
    def ops_url(self) -> str:
        """The API's ops listener's base URL (/metrics, /docs, the codec)."""
        return f"http://{HOST}:{self.ops_port}"

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
        return [self.temporal, self.marketplace, *self.workers, *self.extras, self.api]

    def start(self, wait_seconds: float = 90) -> None:
        """Start the dev server, then every other piece at once (their start-ups overlap), and
        wait until each is ready."""
        self.temporal.start(wait_seconds)
        rest = self.processes[1:]
        for process in rest:
            process.spawn()
        for process in rest:
            process.wait_ready(wait_seconds)

    def stop(self) -> None:
        """Stop every piece, newest first; kill what does not stop. Never raises before all
        were tried."""
        problems = []
        for process in reversed(self.processes):
            try:
                process.terminate()
            except Exception as err:  # The others must still be stopped.
                problems.append(f"{process.name}: {err!r}")
                process.kill9()
        if problems:
            raise RuntimeError(f"stopping the stack: {'; '.join(problems)}")

    def leftovers(self) -> list[str]:
        """The process groups this stack ever started that still have a process (after `stop`,
        none should: a process there would be an orphan)."""
        return [
            f"{process.name} (group {group})"
            for process in [*self.processes, *self.retired]
            for group in process.groups
            if group_alive(group)
        ]

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
