"""A secured connection to Temporal (temporal_client.py), for real.

The dev server speaks plain gRPC only, so nginx fronts it with TLS on loopback, as a production
cluster's proxy or Temporal Cloud would. One dev server and one nginx for the module, three doors:

- mTLS: only client certificates signed by the test's CA pass (`ssl_verify_client on`);
- API key: only calls with `Authorization: Bearer <key>` pass; any other is answered with the gRPC
  status UNAUTHENTICATED, as Temporal Cloud answers a wrong key;
- a door that shares no cipher with any client, so that its handshakes end with a TLS alert.

Through each of the first two a real worker and the real API, their own processes with their
settings from the environment, take an order from placement to invoice, and the invariant checker
reads it; with a certificate from another CA, or a wrong key, both stop at start saying why. The
certificates are made here, with `cryptography`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig

from config import Settings
from devtools import system_packages
from devtools.processes import HOST, Process, ProcessStack, free_ports
from temporal_client import TemporalRefusedError, connect
from temporal_credentials import read_credentials
from tests.stack import new_order_id, placement_example
from workflows import ids

WORKER_READY = "worker polling task queue"


# --- Certificates -------------------------------------------------------------------------------

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, the front's certificate, a client's, and an intruder's from another CA."""

    folder: Path

    def __getattr__(self, name: str) -> Path:
        # certificates.client_key is <folder>/client-key.pem
        if name.startswith("__"):
            raise AttributeError(name)
        return self.folder / f"{name.replace('_', '-')}.pem"


def _certificate(
    subject: str,
    key: PrivateKey,
    issuer: tuple[str, PrivateKey] | None = None,
    *,
    names: list[x509.GeneralName] | None = None,
    usage: x509.ObjectIdentifier | None = None,
    valid_from: datetime | None = None,
    valid_days: float = 1,
) -> x509.Certificate:
    """A CA's certificate when `issuer` is None (self-signed), else a leaf signed by `issuer`."""
    issuer_name, issuer_key = issuer or (subject, key)
    start = valid_from or datetime.now(UTC) - timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(folder: Path) -> Certificates:
    """A throwaway PKI: the test CA, the front's certificate (for localhost and 127.0.0.1),
    a client's signed by the CA, and an intruder's signed by another CA; plus broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = Certificates(folder)

    def write(name: str, item: x509.Certificate | PrivateKey, password: bytes = b"") -> None:
        if isinstance(item, x509.Certificate):
            data = item.public_bytes(serialization.Encoding.PEM)
        else:
            encryption = (
                serialization.BestAvailableEncryption(password)
                if password
                else serialization.NoEncryption()
            )
            data = item.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
        getattr(files, name).write_bytes(data)

    def new_key() -> PrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    ca_key, other_ca_key = new_key(), new_key()
    ca = ("Test CA", ca_key)
    write("ca", _certificate("Test CA", ca_key))
    write("other_ca", _certificate("Other test CA", other_ca_key))
    server_key = new_key()
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    server = _certificate(
        "temporal-front", server_key, ca, names=loopback, usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    write("server", server)
    write("server_key", server_key)
    client_key = new_key()
    write("client", _certificate("worker", client_key, ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    write("client_key", client_key)
    write("client_key_encrypted", client_key, password=b"secret")
    intruder_key = new_key()
    other_ca = ("Other test CA", other_ca_key)
    intruder = _certificate(
        "intruder", intruder_key, other_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    write("intruder", intruder)
    write("intruder_key", intruder_key)
    expired_key = new_key()
    last_year = datetime.now(UTC) - timedelta(days=365)
    write("expired", _certificate("expired", expired_key, ca, valid_from=last_year, valid_days=30))
    write("expired_key", expired_key)
    files.not_pem.write_text("not a certificate\n")
    return files


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """The module's certificates, made once."""
    return make_certificates(tmp_path_factory.mktemp("certificates"))


# --- The TLS front ------------------------------------------------------------------------------

NGINX_CONF = """\
{user}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    log_format calls '$server_port "$ssl_client_s_dn" $request_uri $status $sent_http_grpc_status';
    access_log {folder}/access.log calls;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    # A worker's long poll holds its call for about a minute; a history can be large.
    grpc_read_timeout 300s;
    grpc_send_timeout 300s;
    client_max_body_size 0;
    ssl_certificate {certificates.server};
    ssl_certificate_key {certificates.server_key};
    map $http_authorization $api_key_ok {{
        "Bearer {api_key}" 1;
        default 0;
    }}
    server {{
        listen {host}:{mtls_port} ssl http2;
        ssl_client_certificate {certificates.ca};
        ssl_verify_client on;
        location / {{ grpc_pass grpc://{host}:{temporal_port}; }}
    }}
    server {{
        listen {host}:{api_key_port} ssl http2;
        location / {{
            default_type application/grpc;
            if ($api_key_ok = 0) {{
                add_header grpc-status 16 always;
                add_header grpc-message "invalid API key" always;
                return 200;
            }}
            grpc_pass grpc://{host}:{temporal_port};
        }}
    }}
    server {{
        listen {host}:{alert_port} ssl http2;
        ssl_protocols TLSv1.2;
        ssl_ciphers AES128-SHA;
        location / {{ return 404; }}
    }}
}}
"""


@dataclass
class Front:
    """The dev server and the fake marketplace (a ProcessStack's), and nginx before the server."""

    stack: ProcessStack
    certificates: Certificates
    api_key: str
    mtls_port: int
    api_key_port: int
    alert_port: int

    def address(self, port: int) -> str:
        """host:port of one of the front's doors."""
        return f"{HOST}:{port}"

    @property
    def mtls(self) -> dict[str, str]:
        """The settings of a client that the mTLS door takes."""
        return {
            "TEMPORAL_ADDRESS": self.address(self.mtls_port),
            "TEMPORAL_TLS_CA_FILE": str(self.certificates.ca),
            "TEMPORAL_TLS_CERT_FILE": str(self.certificates.client),
            "TEMPORAL_TLS_KEY_FILE": str(self.certificates.client_key),
        }

    def api_key_settings(self, key: str) -> dict[str, str]:
        """The settings of a client that sends `key` to the API-key door."""
        key_file = self.stack.workdir / f"api-key-{secrets.token_hex(4)}"
        key_file.write_text(key + "\n")
        return {
            "TEMPORAL_ADDRESS": self.address(self.api_key_port),
            "TEMPORAL_TLS_CA_FILE": str(self.certificates.ca),
            "TEMPORAL_API_KEY_FILE": str(key_file),
        }

    def calls(self) -> list[str]:
        """nginx's access log: `port "client certificate" path status grpc-status` per call."""
        log = self.stack.workdir / "access.log"
        return log.read_text().splitlines() if log.exists() else []


def _nginx() -> str:
    """Debian's nginx, installed if missing, with the HTTP/2 and gRPC proxy modules."""
    nginx = system_packages.ensure("nginx-light", "nginx")
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=True).stderr
    # The gRPC proxy is built in unless left out on purpose.
    assert "--with-http_v2_module" in built and "--without-http_grpc_module" not in built, (
        f"{nginx} cannot proxy gRPC over HTTP/2: install Debian's nginx-full\n{built}"
    )
    return nginx


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[Front]:
    """A dev server, a fake marketplace and nginx, each its own process, for the module."""
    nginx = _nginx()
    folder = tmp_path_factory.mktemp("tls-front")
    stack = ProcessStack(folder, workers=0, step_seconds=0.05, temporal_db=False)
    taken = {stack.temporal_port, stack.api_port, stack.marketplace_port}
    ports = free_ports(3)
    while taken & set(ports):
        ports = free_ports(3)
    front = Front(stack, certificates, secrets.token_urlsafe(24), *ports)
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            # As root, nginx's worker would drop to a user who cannot read pytest's 0700 folders.
            user="user root;" if os.geteuid() == 0 else "",
            folder=folder,
            host=HOST,
            certificates=certificates,
            api_key=front.api_key,
            mtls_port=front.mtls_port,
            api_key_port=front.api_key_port,
            alert_port=front.alert_port,
            temporal_port=stack.temporal_port,
        )
    )
    proxy = Process(
        "nginx",
        [nginx, "-p", str(folder), "-e", str(folder / "nginx-error.log"), "-c", str(conf)],
        stack.env,
        folder / "nginx.log",
        port=front.mtls_port,
    )
    stack.extras.append(proxy)
    try:
        pieces = [stack.temporal, stack.marketplace, proxy]
        for piece in pieces:
            piece.spawn()
        for piece in pieces:
            piece.wait_ready(60)
        yield front
    finally:
        stack.stop()
    assert stack.leftovers() == [], stack.logs()


@asynccontextmanager
async def serving(front: Front, name: str, settings: dict[str, str]) -> AsyncIterator[str]:
    """A worker and the API, as processes with `settings` (on a task queue and a warehouse of
    their own); yields the API's URL once both are ready."""
    (api_port,) = free_ports(1)
    env = settings | {
        "TASK_QUEUE": f"{name}-{front.stack.temporal_port}",
        "WAREHOUSE_DB": str(front.stack.workdir / f"{name}-warehouse.db"),
    }
    worker, api = _worker(front, name, env), _api(front, name, env, api_port)
    try:
        for process in (worker, api):
            process.spawn()
        for process in (worker, api):
            await asyncio.to_thread(process.wait_ready, 60)
        yield f"http://{HOST}:{api_port}"
    finally:
        for process in (api, worker):
            await asyncio.to_thread(process.terminate)


def _worker(front: Front, name: str, env: dict[str, str]) -> Process:
    worker = Process(
        f"{name}-worker",
        [sys.executable, "worker.py"],
        front.stack.env | env | {"DATA_DIR": str(front.stack.workdir / f"{name}-worker")},
        front.stack.workdir / f"{name}-worker.log",
        ready_text=WORKER_READY,
    )
    front.stack.extras.append(worker)
    return worker


def _api(front: Front, name: str, env: dict[str, str], port: int) -> Process:
    # Its own ops listener's port too: the stack's API holds the one in front.stack.env.
    (ops_port,) = free_ports(1)
    api = Process(
        f"{name}-api",
        [sys.executable, "-m", "api"],
        front.stack.env
        | env
        | {
            "API_PORT": str(port),
            "OPS_PORT": str(ops_port),
            "DATA_DIR": str(front.stack.workdir / f"{name}-api"),
        },
        front.stack.workdir / f"{name}-api.log",
        port=port,
        health_url=f"http://{HOST}:{port}/healthz",
    )
    front.stack.extras.append(api)
    return api


async def invoice_an_order(front: Front, api_url: str) -> str:
    """Place an order, dispatch it, wait until it is invoiced; its marketplaceOrderId."""
    order_id = new_order_id()
    seller_order_id = ids.seller_order_id(order_id)
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        placed = await http.post(
            "/pvt/orders", json=placement_example(order_id, front.stack.endpoint)
        )
        assert placed.status_code == 200, placed.text
        dispatched = await http.post(
            f"/pvt/orders/{seller_order_id}/fulfill", json={"marketplaceOrderId": order_id}
        )
        assert dispatched.status_code == 200, dispatched.text
        deadline = time.monotonic() + 30
        while True:
            order = (await http.get(f"/pvt/orders/{seller_order_id}")).json()
            # Invoiced, and the invoice sent: the status moves before the marketplace is told.
            if order["status"] == "invoiced" and order["invoice"]["sentAt"]:
                break
            assert time.monotonic() < deadline, order
            await asyncio.sleep(0.1)
    journal = front.stack.journal.read_text(encoding="utf-8").splitlines()
    invoices = [
        call
        for call in map(json.loads, journal)
        if call["kind"] == "invoice" and call["marketplaceOrderId"] == order_id
    ]
    assert [call["invoiceNumber"] for call in invoices] == [order["invoice"]["invoiceNumber"]]
    return order_id


async def check_invariants(front: Front, env: dict[str, str], name: str) -> str:
    """`python -m devtools.invariants` over the orders of `name`, through the front; its output."""
    env = (
        front.stack.env
        | env
        | {
            "WAREHOUSE_DB": str(front.stack.workdir / f"{name}-warehouse.db"),
            "DATA_DIR": str(front.stack.workdir / f"{name}-checker"),
        }
    )
    query = f'TaskQueue="{name}-{front.stack.temporal_port}"'
    command = [sys.executable, "-m", "devtools.invariants", "--query", query, "--require-final"]
    for _ in range(20):  # Visibility lists a new workflow a moment after it starts.
        done = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
        )
        if "checked 0 orders" not in done.stdout:
            break
        await asyncio.sleep(0.2)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# --- Orders through each door -------------------------------------------------------------------


async def test_an_order_is_invoiced_through_mtls(front: Front) -> None:
    async with serving(front, "mtls", front.mtls) as api_url:
        await invoice_an_order(front, api_url)
        # The checker reads the order through its query: a worker must be up.
        assert "checked 1 orders" in await check_invariants(front, front.mtls, "mtls")

    # The worker polled through the front, with its certificate.
    polls = [
        call
        for call in front.calls()
        if call.startswith(f'{front.mtls_port} "CN=worker" ') and "PollWorkflowTaskQueue" in call
    ]
    assert any(" 200 " in call for call in polls), front.calls()


async def test_an_order_is_invoiced_with_an_api_key(front: Front) -> None:
    settings = front.api_key_settings(front.api_key)
    async with serving(front, "api-key", settings) as api_url:
        await invoice_an_order(front, api_url)
        assert "checked 1 orders" in await check_invariants(front, settings, "api-key")

    polls = [
        call
        for call in front.calls()
        if call.startswith(f"{front.api_key_port} ") and "PollWorkflowTaskQueue" in call
    ]
    # Answered by Temporal (its grpc-status is a trailer), not refused by the front.
    assert any(call.endswith(" 200 -") for call in polls), front.calls()


# --- Refusals -----------------------------------------------------------------------------------


async def test_a_refused_certificate_or_api_key_stops_the_worker_and_the_api(
    front: Front,
) -> None:
    intruder = front.mtls | {
        "TEMPORAL_TLS_CERT_FILE": str(front.certificates.intruder),
        "TEMPORAL_TLS_KEY_FILE": str(front.certificates.intruder_key),
    }
    wrong_key = front.api_key_settings("not-" + front.api_key)
    expected = {
        "intruder": (
            f"Temporal at {front.address(front.mtls_port)} refused this client (HTTP 400 Bad "
            "Request, from the server or a proxy before it); it presented the client "
            "certificate CN=intruder issued by CN=Other test CA"
        ),
        "wrong-key": (
            f"Temporal at {front.address(front.api_key_port)} refused this client "
            "(Unauthenticated: invalid API key); it presented the API key in "
            f"TEMPORAL_API_KEY_FILE={wrong_key['TEMPORAL_API_KEY_FILE']}"
        ),
    }
    processes = []
    for name, settings in (("intruder", intruder), ("wrong-key", wrong_key)):
        env = settings | {"TASK_QUEUE": f"{name}-{front.stack.temporal_port}"}
        (api_port,) = free_ports(1)
        processes += [(name, _worker(front, name, env)), (name, _api(front, name, env, api_port))]
    for _, process in processes:
        process.spawn()

    for name, process in processes:
        assert process.popen is not None
        try:
            code = await asyncio.to_thread(process.popen.wait, 60)
        except subprocess.TimeoutExpired:
            process.kill9()
            raise AssertionError(f"{process.name} still runs:\n{process.log_tail()}") from None
        log = process.log_path.read_text()
        if process.name.endswith("worker"):
            # Stopped with its own message; 1, not a crash on the way out (134, 139).
            assert code == 1, log
            assert f"the worker cannot start: {expected[name]}" in log
            assert WORKER_READY not in log
        else:
            assert code == 1, log
            assert f"the API cannot start: {expected[name]}" in log
            assert f"Uvicorn running on http://{HOST}:{process.port}" not in log


Case = Callable[[Front], tuple[dict[str, Any], str]]

CASES: dict[str, Case] = {
    "a server certificate from an unknown CA (the system's CAs)": lambda front: (
        {"temporal_address": front.address(front.api_key_port), "temporal_tls": True},
        "presented a server certificate not signed by a CA this machine trusts "
        "(TEMPORAL_TLS_CA_FILE is unset): this client refused it",
    ),
    "a server certificate from another CA than TEMPORAL_TLS_CA_FILE's": lambda front: (
        {
            "temporal_address": front.address(front.api_key_port),
            "temporal_tls_ca_file": front.certificates.other_ca,
        },
        "presented a server certificate not signed by the CA in TEMPORAL_TLS_CA_FILE="
        f"{front.certificates.other_ca}: this client refused it",
    ),
    "a server certificate for other names": lambda front: (
        {
            "temporal_address": front.address(front.api_key_port),
            "temporal_tls_ca_file": front.certificates.ca,
            "temporal_tls_server_name": "temporal.example",
        },
        "presented a server certificate for localhost, 127.0.0.1, not for temporal.example: "
        "this client refused it; set TEMPORAL_TLS_SERVER_NAME to a name it carries",
    ),
    "no client certificate where one is required": lambda front: (
        {
            "temporal_address": front.address(front.mtls_port),
            "temporal_tls_ca_file": front.certificates.ca,
        },
        "refused this client (HTTP 400 Bad Request, from the server or a proxy before it); it "
        "presented no client certificate and no API key",
    ),
    "no API key where one is required": lambda front: (
        {
            "temporal_address": front.address(front.api_key_port),
            "temporal_tls_ca_file": front.certificates.ca,
        },
        "refused this client (Unauthenticated: invalid API key); it presented no client "
        "certificate and no API key",
    ),
    "a handshake the server ends with an alert": lambda front: (
        {
            "temporal_address": front.address(front.alert_port),
            "temporal_tls_ca_file": front.certificates.ca,
        },
        "ended the TLS handshake (alert HandshakeFailure): it refuses what this client "
        "presented (no client certificate and no API key), or shares no TLS version or cipher "
        "with it",
    ),
    "TLS to a server that speaks plain gRPC": lambda front: (
        {"temporal_address": front.stack.temporal_address, "temporal_tls": True},
        "does not answer in TLS, and this client is set for TLS (TLS, the server checked "
        "against the system's CAs): give the server's TLS address, or set TEMPORAL_TLS=false "
        "if it takes plain connections",
    ),
}


@pytest.mark.parametrize("lazy", [False, True], ids=["worker", "api"])
@pytest.mark.parametrize("case", list(CASES))
async def test_a_client_and_a_server_that_refuse_each_other_are_told_so(
    front: Front, case: str, lazy: bool
) -> None:
    settings, expected = CASES[case](front)

    with pytest.raises(TemporalRefusedError) as refused:
        await connect(Settings(**settings), data_converter=pydantic_data_converter, lazy=lazy)

    assert str(refused.value) == f"Temporal at {settings['temporal_address']} {expected}"


async def test_a_server_not_up_yet_is_no_refusal(front: Front) -> None:
    (closed,) = free_ports(1)
    settings = Settings(
        temporal_address=front.address(closed), temporal_tls_ca_file=front.certificates.ca
    )

    # The worker tries again (a RuntimeError it retries on), the API starts (a lazy client).
    with pytest.raises(RuntimeError) as unreachable:
        await connect(settings, data_converter=pydantic_data_converter)
    assert not isinstance(unreachable.value, TemporalRefusedError)
    assert "Connection refused" in str(unreachable.value)
    client = await connect(settings, data_converter=pydantic_data_converter, lazy=True)
    assert client.service_client.config.target_host == front.address(closed)


# --- Settings -----------------------------------------------------------------------------------

Problem = Callable[[Certificates], tuple[dict[str, Any], str]]

PROBLEMS: dict[str, Problem] = {
    "certificate file missing": lambda c: (
        {"temporal_tls_cert_file": c.absent, "temporal_tls_key_file": c.client_key},
        f"TEMPORAL_TLS_CERT_FILE: {c.absent} does not exist",
    ),
    "certificate file a folder": lambda c: (
        {"temporal_tls_cert_file": c.folder, "temporal_tls_key_file": c.client_key},
        f"TEMPORAL_TLS_CERT_FILE: {c.folder} is a directory, not a file",
    ),
    "certificate not PEM": lambda c: (
        {"temporal_tls_cert_file": c.client_key, "temporal_tls_key_file": c.client_key},
        f"TEMPORAL_TLS_CERT_FILE: {c.client_key} is not a PEM certificate",
    ),
    "CA not a certificate": lambda c: (
        {"temporal_tls_ca_file": c.not_pem},
        f"TEMPORAL_TLS_CA_FILE: {c.not_pem} is not a PEM certificate",
    ),
    "key not PEM": lambda c: (
        {"temporal_tls_cert_file": c.client, "temporal_tls_key_file": c.client},
        f"TEMPORAL_TLS_KEY_FILE: {c.client} is not a PEM private key",
    ),
    "key not the certificate's": lambda c: (
        {"temporal_tls_cert_file": c.client, "temporal_tls_key_file": c.intruder_key},
        f"TEMPORAL_TLS_KEY_FILE: {c.intruder_key} is not the private key of the certificate in "
        f"TEMPORAL_TLS_CERT_FILE ({c.client}, CN=worker)",
    ),
    "key encrypted": lambda c: (
        {"temporal_tls_cert_file": c.client, "temporal_tls_key_file": c.client_key_encrypted},
        f"TEMPORAL_TLS_KEY_FILE: {c.client_key_encrypted} is encrypted",
    ),
    "certificate expired": lambda c: (
        {"temporal_tls_cert_file": c.expired, "temporal_tls_key_file": c.expired_key},
        f"TEMPORAL_TLS_CERT_FILE: {c.expired} (CN=expired) expired on ",
    ),
    "certificate without its key": lambda c: (
        {"temporal_tls_cert_file": c.client},
        "TEMPORAL_TLS_CERT_FILE is set but TEMPORAL_TLS_KEY_FILE is not: mTLS needs",
    ),
    "key without its certificate": lambda c: (
        {"temporal_tls_key_file": c.client_key},
        "TEMPORAL_TLS_KEY_FILE is set but TEMPORAL_TLS_CERT_FILE is not: mTLS needs",
    ),
    "TLS switched off with a CA": lambda c: (
        {"temporal_tls": False, "temporal_tls_ca_file": c.ca},
        "TEMPORAL_TLS=false, but TEMPORAL_TLS_CA_FILE is set",
    ),
    "API key file empty": lambda c: (
        {"temporal_api_key_file": c.empty},
        f"TEMPORAL_API_KEY_FILE: {c.empty} is empty",
    ),
    "API key file with more than a key": lambda c: (
        {"temporal_api_key_file": c.client},
        f"TEMPORAL_API_KEY_FILE: {c.client} holds more than a key",
    ),
}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_settings_that_cannot_work_are_refused_naming_the_file(
    certificates: Certificates, problem: str
) -> None:
    certificates.empty.write_text("\n")
    values, expected = PROBLEMS[problem](certificates)

    with pytest.raises(ValidationError) as refused:
        Settings(**values)

    assert expected in refused.value.errors()[0]["msg"]


def test_tls_is_on_with_any_tls_setting_or_an_api_key_unless_switched_off(
    certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = certificates.folder / "api-key"
    key_file.write_text("the-key\n")
    # Empty, as compose writes an unset `${TEMPORAL_TLS_CA_FILE:-}`: unset.
    monkeypatch.setenv("TEMPORAL_TLS_CA_FILE", "")
    monkeypatch.setenv("TEMPORAL_TLS", "")

    plain = read_credentials(Settings())
    system_cas = read_credentials(Settings(temporal_tls=True))
    api_key = read_credentials(Settings(temporal_api_key_file=key_file))
    api_key_plain = read_credentials(Settings(temporal_api_key_file=key_file, temporal_tls=False))
    mtls = read_credentials(
        Settings(
            temporal_tls_ca_file=certificates.ca,
            temporal_tls_cert_file=certificates.client,
            temporal_tls_key_file=certificates.client_key,
            temporal_tls_server_name="temporal.internal",
        )
    )

    assert (plain.tls, plain.api_key) == (None, None)
    assert (system_cas.tls, system_cas.api_key) == (TLSConfig(), None)
    assert (api_key.tls, api_key.api_key) == (TLSConfig(), "the-key")
    assert (api_key_plain.tls, api_key_plain.api_key) == (None, "the-key")
    assert mtls.tls == TLSConfig(
        server_root_ca_cert=certificates.ca.read_bytes(),
        domain="temporal.internal",
        client_cert=certificates.client.read_bytes(),
        client_private_key=certificates.client_key.read_bytes(),
    )
