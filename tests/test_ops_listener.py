"""The ops listener (api/ops.py, api/ops_auth.py, docs/ops-listener.md), on real processes: the port
VTEX calls serves its endpoints and /healthz only; metrics, docs and the payload codec are on the
other port, behind OPS_TOKEN, and the codec also behind the Temporal UI's OIDC token (a JWT checked
against a JWKS that a real local HTTP server serves), for the UI's origin only; the processes
refuse to start without a payload key when told to require one, and say whether they encrypt."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client

from api.__main__ import ops_line
from api.ops_auth import JwtVerifier, OpsAccess
from codec import new_key_entry
from config import Settings
from devtools.processes import HOST, Process, ProcessStack, clean_environment, free_ports, listening
from tests.stack import new_order_id
from tests.test_codec import PERSONAL, personal_placement
from tests.test_crashes import processes

VTEX_KEY, VTEX_TOKEN = "vtex-app-key", "vtex-app-token"
VTEX = {"X-VTEX-API-AppKey": VTEX_KEY, "X-VTEX-API-AppToken": VTEX_TOKEN}
OPS_TOKEN = "ops-token-for-prometheus-and-the-cli"
PAYLOAD_KEY = new_key_entry("k-ops")
AUDIENCE, ISSUER, KID = "temporal-ui", "https://idp.test/", "idp-key-1"
UI_ORIGINS = ("http://127.0.0.1:8233", "http://localhost:8233")
PYTHON = sys.executable
TEMPORAL = str(Path(sysconfig.get_path("scripts")) / "temporal")


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


IDP_KEY, OTHER_KEY = _rsa_key(), _rsa_key()


def bearer(token: str) -> dict[str, str]:
    """The Authorization header the UI, Prometheus and the CLI send."""
    return {"Authorization": f"Bearer {token}"}


def id_token(
    key: rsa.RSAPrivateKey = IDP_KEY,
    kid: str = KID,
    audience: str = AUDIENCE,
    issuer: str = ISSUER,
    expires_in: float = 300,
) -> str:
    """An access token as the UI's IdP would issue it (by default: valid)."""
    now = int(time.time())
    claims = {"sub": "ops-person", "aud": audience, "iss": issuer, "iat": now}
    claims["exp"] = now + int(expires_in)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def hs256_with_the_public_key() -> str:
    """The algorithm-confusion forgery: HS256 "signed" with the IdP's public key, which anyone
    has."""
    public = IDP_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    claims = {"aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 300}
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    """The IdP's JWKS (IDP_KEY's public half), served over real HTTP on loopback."""
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(IDP_KEY.public_key()))
    document = json.dumps(
        {"keys": [public_jwk | {"kid": KID, "use": "sig", "alg": "RS256"}]}
    ).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/jwks.json" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(document if self.path == "/jwks.json" else b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Ports:
    """The running stack and a client for each of the API's two ports."""

    stack: ProcessStack
    vtex: httpx.AsyncClient
    ops: httpx.AsyncClient


@pytest.fixture(scope="module")
async def ports(tmp_path_factory: pytest.TempPathFactory, jwks_url: str) -> AsyncIterator[Ports]:
    """The stack as production would set it: VTEX's credentials, encryption required and on, an
    OPS_TOKEN, the UI's IdP, the UI's two origins."""
    env = {
        "SELLER_APP_KEY": VTEX_KEY,
        "SELLER_APP_TOKEN": VTEX_TOKEN,
        "PAYLOAD_ENCRYPTION_KEY": PAYLOAD_KEY,
        "REQUIRE_PAYLOAD_ENCRYPTION": "true",
        "OPS_TOKEN": OPS_TOKEN,
        "CODEC_JWKS_URL": jwks_url,
        "CODEC_JWT_AUDIENCE": AUDIENCE,
        "CODEC_JWT_ISSUER": ISSUER,
        "CODEC_CORS_ORIGINS": ",".join(UI_ORIGINS),
    }
    async with (
        processes(tmp_path_factory.mktemp("ops"), workers=1, step_seconds=0.1, env=env) as stack,
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as vtex,
        httpx.AsyncClient(base_url=stack.ops_url, timeout=30) as ops,
    ):
        yield Ports(stack, vtex, ops)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The one error shape, with this status and code."""
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def plain_payloads(text: str) -> dict[str, Any]:
    """Temporal Payloads as JSON, one unencrypted payload holding `text`."""
    data = base64.b64encode(json.dumps(text).encode()).decode()
    encoding = base64.b64encode(b"json/plain").decode()
    return {"payloads": [{"metadata": {"encoding": encoding}, "data": data}]}


# ── The VTEX-facing port ───────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/metrics"),
        ("GET", "/docs"),
        ("GET", "/redoc"),
        ("GET", "/openapi.json"),
        ("POST", "/codec/decode"),
        ("POST", "/codec/encode"),
    ],
)
async def test_the_vtex_port_has_no_ops_surface_even_with_vtex_credentials(
    ports: Ports, method: str, path: str
) -> None:
    body = plain_payloads("x") if method == "POST" else None
    for headers in (VTEX, VTEX | bearer(OPS_TOKEN)):
        response = await ports.vtex.request(method, path, json=body, headers=headers)

        assert_error(response, 404, "NotFound")


async def test_both_ports_answer_healthz_without_credentials(ports: Ports) -> None:
    for client in (ports.vtex, ports.ops):
        response = await client.get("/healthz")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ok"


# ── OPS_TOKEN ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("path", ["/metrics", "/docs", "/openapi.json"])
async def test_ops_surfaces_take_the_ops_token_and_nothing_else(ports: Ports, path: str) -> None:
    refused: list[dict[str, str]] = [
        {},
        bearer("not-the-ops-token"),
        VTEX,
        bearer(VTEX_TOKEN),
        bearer(id_token()),  # The UI's token opens the codec, not these.
        {"Authorization": OPS_TOKEN},  # Not a bearer.
    ]
    for headers in refused:
        response = await ports.ops.get(path, headers=headers)
        assert_error(response, 401, "Unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"

    response = await ports.ops.get(path, headers=bearer(OPS_TOKEN))

    assert response.status_code == 200, response.text


async def test_ops_metrics_count_what_the_vtex_port_answered(ports: Ports) -> None:
    missing = f"/pvt/orders/SLR-{new_order_id()}"
    for _ in range(3):
        assert (await ports.vtex.get(missing, headers=VTEX)).status_code == 404

    metrics = (await ports.ops.get("/metrics", headers=bearer(OPS_TOKEN))).text

    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("seller_api_requests_total{")
        and 'route="/pvt/orders/{orderId}"' in line
        and 'status="404"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 3


async def test_ops_openapi_documents_the_vtex_port(ports: Ports) -> None:
    schema = (await ports.ops.get("/openapi.json", headers=bearer(OPS_TOKEN))).json()
    docs = (await ports.ops.get("/docs", headers=bearer(OPS_TOKEN))).text

    assert {"/pvt/orders", "/pvt/orders/{orderId}/cancel", "/healthz"} <= set(schema["paths"])
    assert not any(path.startswith("/codec") for path in schema["paths"])
    assert "OrderPlacement" in schema["components"]["schemas"]
    assert "swagger-ui" in docs and "/openapi.json" in docs


# ── The codec's callers ─────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("headers", "opens"),
    [
        pytest.param(lambda: bearer(OPS_TOKEN), True, id="ops-token"),
        pytest.param(lambda: bearer(id_token()), True, id="ui-jwt"),
        pytest.param(dict, False, id="nothing"),
        pytest.param(lambda: VTEX, False, id="vtex-credentials"),
        pytest.param(lambda: bearer(VTEX_TOKEN), False, id="vtex-token-as-bearer"),
        pytest.param(lambda: bearer("not-a-jwt"), False, id="garbage"),
        pytest.param(lambda: bearer(id_token(expires_in=-60)), False, id="expired"),
        pytest.param(lambda: bearer(id_token(audience="another-app")), False, id="audience"),
        pytest.param(lambda: bearer(id_token(issuer="https://evil.test/")), False, id="issuer"),
        pytest.param(lambda: bearer(id_token(key=OTHER_KEY)), False, id="wrong-key"),
        pytest.param(lambda: bearer(id_token(key=OTHER_KEY, kid="k9")), False, id="unknown-kid"),
        pytest.param(lambda: bearer(hs256_with_the_public_key()), False, id="hs256-confusion"),
    ],
)
@pytest.mark.parametrize("path", ["/codec/decode", "/codec/encode"])
async def test_the_codec_opens_to_the_ops_token_or_the_ui_s_jwt_only(
    ports: Ports, path: str, headers: Any, opens: bool
) -> None:
    response = await ports.ops.post(path, json=plain_payloads("hello"), headers=headers())

    if opens:
        assert response.status_code == 200, response.text
        assert len(response.json()["payloads"]) == 1
    else:
        assert_error(response, 401, "Unauthorized")


# ── CORS ────────────────────────────────────────────────────────────────────────────────────────


def preflight(origin: str) -> dict[str, str]:
    """What a browser sends before the UI's POST to the codec."""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }


@pytest.mark.parametrize("origin", UI_ORIGINS)
async def test_the_ui_s_origin_gets_its_preflight_and_its_answers(
    ports: Ports, origin: str
) -> None:
    answer = await ports.ops.options("/codec/decode", headers=preflight(origin))

    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == origin
    assert answer.headers["access-control-allow-credentials"] == "true"
    assert "POST" in answer.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-namespace", "authorization"} <= allowed

    headers = {"Origin": origin, "X-Namespace": "default"} | bearer(id_token())
    decoded = await ports.ops.post("/codec/decode", json=plain_payloads("x"), headers=headers)

    assert decoded.status_code == 200, decoded.text
    assert decoded.headers["access-control-allow-origin"] == origin
    refused = await ports.ops.post(
        "/codec/decode", json=plain_payloads("x"), headers={"Origin": origin}
    )
    assert_error(refused, 401, "Unauthorized")
    # The browser may read the 401 too: the UI says why.
    assert refused.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://127.0.0.1:8234", "https://localhost:8233", "null"]
)
async def test_another_origin_gets_no_allow_header(ports: Ports, origin: str) -> None:
    answer = await ports.ops.options("/codec/decode", headers=preflight(origin))

    assert_error(answer, 403, "OriginNotAllowed")
    assert not any(name.startswith("access-control-allow") for name in answer.headers)
    # Its page's POST, even with a valid token (a DNS rebinding would let it send one to this
    # very address), is refused too.
    headers = {"Origin": origin} | bearer(OPS_TOKEN)
    posted = await ports.ops.post("/codec/decode", json=plain_payloads("x"), headers=headers)
    assert_error(posted, 403, "OriginNotAllowed")
    assert "access-control-allow-origin" not in posted.headers


async def test_cors_is_for_the_codec_only(ports: Ports) -> None:
    headers = {"Origin": UI_ORIGINS[0]} | bearer(OPS_TOKEN)

    metrics = await ports.ops.get("/metrics", headers=headers)

    assert metrics.status_code == 200
    assert "access-control-allow-origin" not in metrics.headers


# ── A real order through the codec ──────────────────────────────────────────────────────────────


async def test_the_ops_codec_decodes_a_real_order_s_input(ports: Ports) -> None:
    order_id = new_order_id()
    body = personal_placement(order_id, ports.stack.endpoint)
    placed = await ports.vtex.post("/pvt/orders", json=body, headers=VTEX)
    assert placed.status_code == 200, placed.text
    # Temporal's own copy, read without the key: the workflow's input and the placement's.
    client = await Client.connect(ports.stack.temporal_address)
    raw = Payloads()
    async for event in client.get_workflow_handle(f"order-{order_id}").fetch_history_events():
        if event.HasField("workflow_execution_started_event_attributes"):
            raw.payloads.extend(event.workflow_execution_started_event_attributes.input.payloads)
        if event.HasField("workflow_execution_update_accepted_event_attributes"):
            update = event.workflow_execution_update_accepted_event_attributes
            raw.payloads.extend(update.accepted_request.input.args.payloads)
    assert len(raw.payloads) >= 2
    assert PERSONAL["street"].encode() not in raw.SerializeToString()

    for headers in (bearer(id_token()), bearer(OPS_TOKEN)):
        decoded = await ports.ops.post(
            "/codec/decode", json=json_format.MessageToDict(raw), headers=headers
        )

        assert decoded.status_code == 200, decoded.text
        plain = json_format.ParseDict(decoded.json(), Payloads())
        text = b"".join(payload.data for payload in plain.payloads).decode()
        assert PERSONAL["street"] in text
        assert order_id in text


async def test_the_temporal_cli_decodes_through_the_ops_codec_with_the_ops_token(
    ports: Ports,
) -> None:
    order_id = new_order_id()
    body = personal_placement(order_id, ports.stack.endpoint)
    assert (await ports.vtex.post("/pvt/orders", json=body, headers=VTEX)).status_code == 200

    def show(*codec: str) -> subprocess.CompletedProcess[str]:
        command = [TEMPORAL, "workflow", "show", "--workflow-id", f"order-{order_id}"]
        command += ["--address", ports.stack.temporal_address, "--output", "json", *codec]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    endpoint = ["--codec-endpoint", f"{ports.stack.ops_url}/codec"]
    decoded = await asyncio.to_thread(show, *endpoint, "--codec-auth", f"Bearer {OPS_TOKEN}")
    refused = await asyncio.to_thread(show, *endpoint)

    assert decoded.returncode == 0, decoded.stderr
    assert PERSONAL["street"] in history_text(decoded.stdout)
    assert PERSONAL["street"] not in history_text(refused.stdout) + refused.stderr


def history_text(shown: str) -> str:
    """A `workflow show --output json`'s text, its payloads' data decoded from base64."""
    found = [shown]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    try:
                        found.append(base64.b64decode(value).decode("utf-8", "replace"))
                    except ValueError:
                        found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    try:
        walk(json.loads(shown))
    except ValueError:
        pass
    return "\n".join(found)


# ── Start-up ───────────────────────────────────────────────────────────────────────────────────


async def test_the_api_and_the_worker_say_at_start_that_payloads_are_encrypted(
    ports: Ports,
) -> None:
    api_log = ports.stack.api.log_path.read_text()
    worker_log = ports.stack.workers[0].log_path.read_text()
    secret = PAYLOAD_KEY.partition(":")[2]

    for log in (api_log, worker_log):
        assert "payloads: encrypted (AES-256-GCM) with key id k-ops" in log
        assert secret not in log
    assert f"ops listener on http://{HOST}:{ports.stack.ops_port}" in api_log
    assert "OPS_TOKEN required (but /healthz); codec: OPS_TOKEN or a JWT" in api_log
    assert OPS_TOKEN not in api_log


def lone_process(tmp_path: Path, name: str, command: list[str], env: dict[str, str]) -> Process:
    """`command` (not started) with only `env` of the service's settings, against a Temporal that
    is not there (the API connects lazily; the worker retries): ready once it listens on its ops
    port (the API) and has logged its payloads line."""
    api_port, ops_port = free_ports(2)
    return Process(
        name,
        command,
        clean_environment()
        | {
            "TEMPORAL_ADDRESS": f"{HOST}:1",
            "API_PORT": str(api_port),
            "OPS_PORT": str(ops_port),
            "DATA_DIR": str(tmp_path / name),
            "DEFAULT_STOCK": "5",
            "PYTHONUNBUFFERED": "1",
        }
        | env,
        tmp_path / f"{name}.log",
        port=ops_port if command[-1] == "api" else None,
        ready_text="payloads:",
    )


@pytest.mark.parametrize(
    "command", [[PYTHON, "-m", "api"], [PYTHON, "worker.py"]], ids=["api", "worker"]
)
def test_require_payload_encryption_without_a_key_refuses_to_start(
    tmp_path: Path, command: list[str]
) -> None:
    process = lone_process(tmp_path, "alone", command, {"REQUIRE_PAYLOAD_ENCRYPTION": "true"})

    result = subprocess.run(
        process.command, env=process.env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode != 0
    assert "cannot start" in result.stderr
    assert "PAYLOAD_ENCRYPTION_KEY is not set" in result.stderr


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"CODEC_JWKS_URL": "https://idp.test/jwks"}, "CODEC_JWT_AUDIENCE is not"),
        (
            {"CODEC_JWKS_URL": "http://idp.test/jwks", "CODEC_JWT_AUDIENCE": "ui"},
            "an https:// URL is needed",
        ),
        (
            {"SELLER_APP_KEY": "k", "SELLER_APP_TOKEN": "shared-xyz", "OPS_TOKEN": "shared-xyz"},
            "OPS_TOKEN is one of VTEX's credentials",
        ),
        ({"CODEC_CORS_ORIGINS": "localhost:8233"}, "is not an origin"),
        ({"PAYLOAD_ENCRYPTION_KEY": "k1:bm90LWEta2V5"}, "must be key-id:base64 of 32 bytes"),
    ],
)
def test_the_api_refuses_an_ops_setup_that_would_let_others_in(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    process = lone_process(tmp_path, "alone", [PYTHON, "-m", "api"], env)

    result = subprocess.run(
        process.command, env=process.env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode != 0
    assert says in result.stderr
    assert "shared-xyz" not in result.stderr


async def test_without_a_key_or_ops_credentials_the_processes_say_so_and_ops_is_open(
    tmp_path: Path,
) -> None:
    api = lone_process(tmp_path, "api", [PYTHON, "-m", "api"], {})
    worker = lone_process(tmp_path, "worker", [PYTHON, "worker.py"], {})
    try:
        await asyncio.to_thread(api.start)
        await asyncio.to_thread(worker.start)
        ops_url = f"http://{HOST}:{api.port}"
        async with httpx.AsyncClient(base_url=ops_url, timeout=10) as ops:
            metrics = await ops.get("/metrics")
            decode = await ops.post("/codec/decode", json=plain_payloads("x"))
    finally:
        api.terminate()
        worker.terminate()

    assert metrics.status_code == 200
    # Open to whoever reaches it, and no key to decode with: encryption is off.
    assert_error(decode, 404, "NotFound")
    for process in (api, worker):
        assert "payloads: NOT encrypted (PAYLOAD_ENCRYPTION_KEY is not set)" in process.log_tail(
            100
        )
    assert "NO authentication" in api.log_tail(100)
    assert "only where it listens protects it (this machine only)" in api.log_tail(100)


async def test_the_codec_answers_503_while_the_jwks_cannot_be_read(tmp_path: Path) -> None:
    (closed,) = free_ports(1)
    env = {
        "PAYLOAD_ENCRYPTION_KEY": PAYLOAD_KEY,
        "CODEC_JWKS_URL": f"http://{HOST}:{closed}/jwks.json",
        "CODEC_JWT_AUDIENCE": AUDIENCE,
    }
    api = lone_process(tmp_path, "api", [PYTHON, "-m", "api"], env)
    try:
        await asyncio.to_thread(api.start)
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{api.port}", timeout=30) as ops:
            unchecked = await ops.post(
                "/codec/decode", json=plain_payloads("x"), headers=bearer(id_token())
            )
            missing = await ops.post("/codec/decode", json=plain_payloads("x"))
            metrics = await ops.get("/metrics")
    finally:
        api.terminate()

    assert_error(unchecked, 503, "ServiceUnavailable")
    assert_error(missing, 401, "Unauthorized")
    # No OPS_TOKEN: the metrics stay open; the codec takes the JWT only.
    assert metrics.status_code == 200


async def both_listening(api: Process) -> int:
    """Once `api` (a lone_process, ready when its ops listener answers) listens on its VTEX
    port too, which starts beside it: that port."""
    api_port = int(api.env["API_PORT"])
    deadline = time.monotonic() + 20
    while not listening(api_port) and time.monotonic() < deadline:  # noqa: ASYNC110 - a port
        await asyncio.sleep(0.1)
    assert listening(api_port) and listening(int(api.env["OPS_PORT"]))
    return api_port


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
async def test_a_signal_stops_both_listeners(tmp_path: Path, stop: str) -> None:
    api = lone_process(tmp_path, "api", [PYTHON, "-m", "api"], {})
    try:
        await asyncio.to_thread(api.start)
        api_port = await both_listening(api)
        assert api.popen is not None

        api.popen.send_signal(getattr(signal, stop))
        code = await asyncio.to_thread(api.popen.wait, 20)
    finally:
        api.terminate()  # a failed assertion above must not leave it running

    assert code == 0, api.log_tail()
    assert not listening(api_port) and not listening(int(api.env["OPS_PORT"]))
    assert api.log_tail().count("Finished server process") == 2  # Each listener, shut down.


def test_a_taken_ops_port_stops_the_api_with_its_address(tmp_path: Path) -> None:
    process = lone_process(tmp_path, "api", [PYTHON, "-m", "api"], {})
    with socket.socket() as taken:
        taken.bind((HOST, int(process.env["OPS_PORT"])))
        taken.listen()

        result = subprocess.run(
            process.command, env=process.env, capture_output=True, text=True, timeout=60
        )

    assert result.returncode == 1
    assert f"could not start on {HOST}:{process.env['OPS_PORT']}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not listening(int(process.env["API_PORT"]))


async def test_codec_open_lets_a_login_less_ui_decode_while_metrics_keep_the_ops_token(
    tmp_path: Path,
) -> None:
    # docker-compose.yml: OPS_TOKEN guards /metrics, and the Temporal UI, which has no login and
    # so can send no token, still decodes (the ops port is on the host's loopback only).
    env = {"PAYLOAD_ENCRYPTION_KEY": PAYLOAD_KEY, "OPS_TOKEN": OPS_TOKEN, "CODEC_OPEN": "true"}
    api = lone_process(tmp_path, "api", [PYTHON, "-m", "api"], env)
    try:
        await asyncio.to_thread(api.start)
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{api.port}", timeout=30) as ops:
            decode = await ops.post("/codec/decode", json=plain_payloads("x"))
            metrics = await ops.get("/metrics")
            with_token = await ops.get("/metrics", headers=bearer(OPS_TOKEN))
    finally:
        api.terminate()

    assert decode.status_code == 200, decode.text
    assert_error(metrics, 401, "Unauthorized")
    assert with_token.status_code == 200
    assert "codec: OPEN (CODEC_OPEN)" in api.log_tail(100)


async def test_a_hanging_jwks_holds_no_caller_and_no_thread_of_the_vtex_port(
    tmp_path: Path,
) -> None:
    # An IdP that takes connections and never answers: before, each check waited 5 s in turn
    # on the default thread pool, and the VTEX port's catalog reads starved behind them.
    stall = socket.socket()
    stall.bind((HOST, 0))
    stall.listen(64)
    env = {
        "PAYLOAD_ENCRYPTION_KEY": PAYLOAD_KEY,
        "CODEC_JWKS_URL": f"http://{HOST}:{stall.getsockname()[1]}/jwks.json",
        "CODEC_JWT_AUDIENCE": AUDIENCE,
    }
    api = lone_process(tmp_path, "api", [PYTHON, "-m", "api"], env)
    try:
        await asyncio.to_thread(api.start)
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{api.port}", timeout=60) as ops:

            async def decode() -> httpx.Response:
                headers = bearer(id_token())
                return await ops.post("/codec/decode", json=plain_payloads("x"), headers=headers)

            started = time.monotonic()
            answers = await asyncio.gather(*(decode() for _ in range(12)))
            all_answered = time.monotonic() - started
            started = time.monotonic()
            again = await decode()
            answered_again = time.monotonic() - started
    finally:
        api.terminate()
        stall.close()

    for answer in [*answers, again]:
        assert_error(answer, 503, "ServiceUnavailable")
    # One fetch's timeout (5 s) for the twelve, not twelve of them one after the other (60 s);
    # then none while the JWKS is known unreadable.
    assert all_answered < 20, all_answered
    assert answered_again < 2, answered_again


async def test_the_codec_takes_a_bounded_number_of_payloads(ports: Ports) -> None:
    one = plain_payloads("x")["payloads"][0]
    headers = bearer(OPS_TOKEN)

    refused = await ports.ops.post(
        "/codec/encode", json={"payloads": [one] * 1001}, headers=headers
    )
    taken = await ports.ops.post("/codec/encode", json={"payloads": [one] * 1000}, headers=headers)

    assert_error(refused, 400, "InvalidRequest")
    assert "at most 1000 payloads" in refused.json()["error"]["message"]
    assert taken.status_code == 200 and len(taken.json()["payloads"]) == 1000


async def test_a_jwt_whose_algorithm_does_not_fit_its_key_is_a_401_not_a_500(
    ports: Ports,
) -> None:
    # The kids are public in the JWKS: an ES256 header naming the RSA key, with no signature
    # at all, reached PyJWT as a key it could not read (a TypeError, answered 500).
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "ES256", "kid": KID, "typ": "JWT"}).encode())
    claims = b64(json.dumps({"aud": AUDIENCE, "exp": int(time.time()) + 60}).encode())
    token = f"{header}.{claims}.{b64(b'not a signature')}"

    answer = await ports.ops.post("/codec/decode", json=plain_payloads("x"), headers=bearer(token))

    assert_error(answer, 401, "Unauthorized")


def test_with_a_jwt_for_the_codec_but_no_ops_token_the_start_warns_that_the_rest_is_open() -> None:
    # A JWT opens only the codec (rule 3): the operators' actions and the price and stock changes
    # stay open. The start line said "metrics and docs open", at info.
    access = OpsAccess("", JwtVerifier("https://idp.example/jwks.json", AUDIENCE))
    access.check_ops_token(None)  # nothing asked: open
    line = ops_line(Settings(ops_token="", ops_host="127.0.0.1"), access)
    assert "NO OPS_TOKEN" in line and "acts on orders and changes prices and stock" in line, line
    assert "set OPS_TOKEN" in line, line
