"""The calls to the marketplace, over real HTTP: an endpoint no call can reach is refused and ends
the step instead of being retried forever, and a call goes to the address that was checked, not
to whatever the name resolves to a moment later (DNS rebinding)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities import marketplace_hosts
from activities.marketplace import (
    InvoiceNotice,
    MarketplaceClient,
    MarketplaceNotDelivered,
    invoice_body,
    pinned,
)
from activities.marketplace_hosts import HostPolicy
from activities.warehouse import Invoice
from config import DEFAULT_MARKETPLACE_HOSTS
from devtools.fake_marketplace import FakeMarketplaceState, create_app, serve_fake_marketplace
from tests.stack import new_order_id, placement_example, running_stack
from workflows.messages import OrderLine

ORDER_ID = "1138342255777-01"
INVOICE = Invoice(
    invoice_number="NF-1",
    issuance_date=datetime(2026, 1, 2, 10, 0, tzinfo=UTC),
    invoice_value=1000,
    lines=[OrderLine(sku="1", quantity=1, price=1000)],
)
# Stands for a public address in the rebinding test (tests send nothing beyond loopback): the
# policy is told to take it as public, and the marketplace the name was checked for listens there.
CHECKED_ADDRESS = "127.0.0.2"

# Endpoints that pass a plain URL parse but that httpx or the resolver fail on at every attempt,
# with what the refusal names.
UNREACHABLE = [
    ("http://127.0.0.1:abc/api/oms", "Invalid port"),
    ("http://127.0.0.1:99999/api/oms", "port 99999"),
    ("http://127.0.0.1:0/api/oms", "port 0"),
    (f"https://{'a' * 64}.vtex.com/api/oms", "over 63 characters"),
    ("https://a..vtex.com/api/oms", "empty label"),
    (f"https://{'a.' * 130}vtex.com/api/oms", "over 253"),
]


def notice(endpoint: str) -> InvoiceNotice:
    return InvoiceNotice(
        marketplace_services_endpoint=endpoint, marketplace_order_id=ORDER_ID, invoice=INVOICE
    )


def client(allowed_hosts: str, **http: Any) -> MarketplaceClient:
    return MarketplaceClient(
        httpx.AsyncClient(timeout=2, follow_redirects=False, **http),
        "seller-key",
        "seller-token",
        HostPolicy.parse(allowed_hosts),
    )


@pytest.mark.parametrize(("endpoint", "named"), UNREACHABLE)
def test_an_endpoint_no_call_can_reach_is_refused_naming_what_is_wrong(
    endpoint: str, named: str
) -> None:
    refused = HostPolicy.parse(f"{DEFAULT_MARKETPLACE_HOSTS},127.0.0.1").refusal(endpoint)

    assert refused is not None and named in refused


async def test_a_placement_naming_an_endpoint_no_call_can_reach_is_a_400(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    hosts = f"{DEFAULT_MARKETPLACE_HOSTS},127.0.0.1"
    async with running_stack(temporal_env, tmp_path, marketplace_allowed_hosts=hosts) as stack:
        for endpoint, named in UNREACHABLE:
            order_id = new_order_id()

            response = await stack.http.post(
                "/pvt/orders", json=placement_example(order_id, endpoint)
            )

            assert response.status_code == 400, (endpoint, response.text)
            detail = response.json()["error"]["details"][0]
            assert detail["field"] == "marketplaceServicesEndpoint"
            assert named in detail["message"]
            assert (await stack.http.get(f"/pvt/orders/SLR-{order_id}")).status_code == 404


@pytest.mark.parametrize(("endpoint", "named"), UNREACHABLE)
async def test_a_call_to_an_endpoint_no_call_can_reach_ends_the_step(
    endpoint: str, named: str
) -> None:
    # An order placed before its endpoint was refused at placement still gets here.
    marketplace = client(f"{DEFAULT_MARKETPLACE_HOSTS},127.0.0.1")
    try:
        with pytest.raises(ApplicationError) as raised:
            await marketplace.send_invoice(notice(endpoint))
    finally:
        await marketplace.close()

    assert raised.value.non_retryable
    assert named in raised.value.message


async def test_an_error_no_retry_can_fix_ends_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the resolver did with a label over 63 characters before those were refused: not an
    # OSError, not an HTTP error, and the same at every attempt.
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("shop.vtex.com", b"shop.vtex.com"):
            raise UnicodeError("encoding with 'idna' codec failed")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    marketplace = client(DEFAULT_MARKETPLACE_HOSTS)
    try:
        with pytest.raises(ApplicationError) as raised:
            await marketplace.send_invoice(notice("https://shop.vtex.com/api/oms?an=store"))
    finally:
        await marketplace.close()

    assert raised.value.non_retryable
    assert raised.value.type == "MarketplaceCallInvalid"
    assert "UnicodeError" in raised.value.message


async def test_a_marketplace_that_does_not_answer_is_still_retried() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    marketplace = client("127.0.0.1")
    try:
        with pytest.raises(MarketplaceNotDelivered):
            await marketplace.send_invoice(notice(f"http://127.0.0.1:{port}/api/oms"))
    finally:
        await marketplace.close()


async def test_a_name_that_rebinds_to_loopback_gets_no_call_and_no_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name != "shop.vtex.com":
            return real(host, port, *args, **kwargs)
        lookups.append(name)
        # The checked (public) address first, loopback from then on.
        address = CHECKED_ADDRESS if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    real_is_public = marketplace_hosts._is_public
    monkeypatch.setattr(
        marketplace_hosts,
        "_is_public",
        lambda address: address == CHECKED_ADDRESS or real_is_public(address),
    )
    async with serve_fake_marketplace(host="127.0.0.1") as internal:
        # The name's one port, on both addresses.
        port = httpx.URL(internal.url).port
        assert port is not None
        async with serve_fake_marketplace(host=CHECKED_ADDRESS, port=port) as checked:
            await _send_to_rebinding_name(port)

        assert lookups  # The name was checked...
        # ...and the call went to the address that was checked, with the name as its Host...
        delivered = checked.state.calls()
        assert [c.kind for c in delivered] == ["invoice"]
        assert delivered[0].headers["host"] == f"shop.vtex.com:{port}"
        assert internal.state.calls() == []  # ...not to loopback, credentials neither.


async def _send_to_rebinding_name(port: int) -> None:
    marketplace = client(DEFAULT_MARKETPLACE_HOSTS)
    try:
        await marketplace.send_invoice(notice(f"http://shop.vtex.com:{port}/api/oms"))
    finally:
        await marketplace.close()


async def test_a_loopback_host_listed_exactly_gets_the_call_with_its_host_header() -> None:
    async with serve_fake_marketplace() as fake:
        marketplace = client("127.0.0.1")
        try:
            answer = await marketplace.send_invoice(notice(f"{fake.url}/api/oms?an=store"))
        finally:
            await marketplace.close()

        assert answer.status_code == 200
        [call] = fake.state.calls(kind="invoice")
        assert call.headers["host"] == fake.url.removeprefix("http://")
        assert call.headers["x-vtex-api-appkey"] == "seller-key"


def self_signed(name: str, folder: Path) -> tuple[Path, Path]:
    """A certificate for `name` that is its own authority, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@asynccontextmanager
async def serve_tls(app: Any, cert: Path, key: Path) -> AsyncIterator[int]:
    """Serve `app` over https on 127.0.0.1 until the block exits; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, ssl_certfile=str(cert), ssl_keyfile=str(key), log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_a_call_sent_to_the_checked_address_keeps_the_name_for_tls_and_host(
    tmp_path: Path,
) -> None:
    cert, key = self_signed("shop.vtex.com", tmp_path)
    state = FakeMarketplaceState()
    trusting = ssl.create_default_context(cafile=str(cert))
    async with (
        serve_tls(create_app(state), cert, key) as port,
        httpx.AsyncClient(verify=trusting, timeout=5) as http,
    ):
        url = f"https://shop.vtex.com:{port}/api/oms/pvt/orders/{ORDER_ID}/invoice"
        request = http.build_request("POST", url, json=invoice_body(INVOICE, None))

        response = await http.send(pinned(request, "127.0.0.1"))

        assert response.status_code == 200
        assert state.calls()[0].headers["host"] == f"shop.vtex.com:{port}"
        # The certificate is checked against the name, not the address: another name fails.
        other = http.build_request("POST", url.replace("shop.", "other."), json={})
        with pytest.raises(httpx.ConnectError, match="certificate"):
            await http.send(pinned(other, "127.0.0.1"))
        assert len(state.calls()) == 1
