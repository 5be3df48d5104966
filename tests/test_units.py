"""The pure pieces: ids, durations, the marketplace URLs and bodies (checked against VTEX's
marketplace OpenAPI file)."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta

import pytest
from openapi_schema_validator import OAS30Validator

from activities.marketplace import invoice_body, marketplace_url, tracking_body
from activities.warehouse import Invoice
from tests.stack import CONTRACT_DIR
from workflows import ids
from workflows.durations import parse_duration
from workflows.lifecycle import NEXT_STATUSES, can_move, dispatch_refusal, is_final
from workflows.messages import OrderLine, OrderStatus, Tracking, vtex_date


def assert_marketplace_schema(instance: object, schema_name: str) -> None:
    spec = json.loads((CONTRACT_DIR / "vtex-external-seller-marketplace.openapi.json").read_text())
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    errors = [error.message for error in OAS30Validator(root).iter_errors(instance)]
    assert not errors, errors


def test_seller_order_id_and_workflow_id_derive_from_the_marketplace_id() -> None:
    assert ids.seller_order_id("1138342255777-01") == "SLR-1138342255777-01"
    assert ids.workflow_id("1138342255777-01") == "order-1138342255777-01"


@pytest.mark.parametrize(
    ("path_id", "candidates"),
    [
        ("SLR-959311095", ["959311095", "SLR-959311095"]),
        ("959311095", ["959311095"]),
        ("SLR-", ["SLR-"]),
    ],
)
def test_a_path_id_leads_to_its_marketplace_ids(path_id: str, candidates: list[str]) -> None:
    assert ids.marketplace_ids_for_path(path_id) == candidates


def test_path_names_order() -> None:
    assert ids.path_names_order("SLR-1", "1")
    assert ids.path_names_order("1", "1")
    assert not ids.path_names_order("SLR-2", "1")


@pytest.mark.parametrize("value", ["1138342255777-01", "v12772213qst-02", "a.b_c:d", "9" * 100])
def test_valid_order_ids(value: str) -> None:
    assert ids.is_valid_order_id(value)


@pytest.mark.parametrize("value", ["", "a b", "a/b", "-leading", "9" * 101, "é", "a\n"])
def test_invalid_order_ids(value: str) -> None:
    assert not ids.is_valid_order_id(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8d", timedelta(days=8)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("3bd", timedelta(days=3)),
        (" 1d ", timedelta(days=1)),
        ("0s", timedelta(0)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "8", "d", "eight days", "1.5d", "-1d", "8 days"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_vtex_date_is_the_seed_format_in_utc() -> None:
    moment = datetime(2014, 10, 6, 15, 52, tzinfo=UTC) + timedelta(hours=3)
    assert vtex_date(moment) == "2014-10-06 18:52:00"


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (
            "https://marketplaceservicesendpoint.myvtex.com/",
            "https://marketplaceservicesendpoint.myvtex.com/pvt/orders/1-01/invoice",
        ),
        (
            "http://oms.vtexinternal.com.br/api/oms?an=store",
            "http://oms.vtexinternal.com.br/api/oms/pvt/orders/1-01/invoice?an=store",
        ),
    ],
)
def test_marketplace_url_keeps_the_endpoint_path_and_query(endpoint: str, expected: str) -> None:
    assert marketplace_url(endpoint, "pvt", "orders", "1-01", "invoice") == expected


def test_marketplace_bodies_follow_the_marketplace_spec() -> None:
    invoice = Invoice(
        invoice_number="NFe-000007",
        issuance_date=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        invoice_value=3598,
        lines=[OrderLine(sku="123456789abc", quantity=1, price=2499)],
    )
    tracking = Tracking(courier="Carrier", tracking_number="SIM1", tracking_url="https://t/SIM1")

    body = invoice_body(invoice, tracking)
    assert_marketplace_schema(body, "requestSendInvoice")
    assert body["issuanceDate"] == "2026-11-23T12:00:00"
    assert body["items"] == [{"id": "123456789abc", "quantity": 1, "price": 2499}]
    assert_marketplace_schema(invoice_body(invoice, None), "requestSendInvoice")
    assert_marketplace_schema(tracking_body(tracking, invoice.issuance_date), "requestSendTracking")


@pytest.mark.parametrize(
    ("name", "schemas"),
    [
        ("vtex-external-seller-fulfillment.openapi.json", {"orderPlacement", "repsonseOrderId"}),
        ("vtex-external-seller-marketplace.openapi.json", {"requestSendInvoice"}),
    ],
)
def test_the_contract_copy_is_vtexs_file(name: str, schemas: set[str]) -> None:
    """contract/ is a copy of ../shared/reference/, which CI has beside the clone."""
    copy = (CONTRACT_DIR / name).read_bytes()
    assert set(json.loads(copy)["components"]["schemas"]) >= schemas
    shared = CONTRACT_DIR.parent.parent / "shared" / "reference" / name
    if shared.exists():
        assert copy == shared.read_bytes(), f"{name} changed in shared/reference: copy it again"


def test_the_lifecycle_only_moves_forward_and_ends() -> None:
    S = OrderStatus
    assert set(NEXT_STATUSES) == set(S)
    # From every status a final one is reachable, and a final status goes nowhere but to another
    # final one (the one such move: an invoiced parcel delivered).
    for status in S:
        seen, frontier = {status}, [status]
        while frontier:
            for target in NEXT_STATUSES[frontier.pop()]:
                if target not in seen:
                    seen.add(target)
                    frontier.append(target)
        assert any(is_final(s) for s in seen), status
        if is_final(status):
            assert all(is_final(target) for target in NEXT_STATUSES[status]), status
        else:
            assert NEXT_STATUSES[status], status
    assert [(s, t) for s in S if is_final(s) for t in NEXT_STATUSES[s]] == [
        (S.INVOICED, S.DELIVERED)
    ]
    assert dispatch_refusal(S.DELIVERED) == "OrderInvoiced"
    # Once the stock is being given back, nothing can start the work the compensation undoes.
    assert not can_move(S.CANCELING, S.FULFILLING)
    assert not can_move(S.EXPIRING, S.FULFILLING)
    assert dispatch_refusal(S.EXPIRING) == "OrderExpired"
    assert dispatch_refusal(S.CANCELING) == "OrderCanceled"
    assert dispatch_refusal(S.PLACED) is None
    # The invoice may win a race with a cancellation, never with an expiry.
    assert can_move(S.CANCELING, S.INVOICED)
    assert not can_move(S.EXPIRING, S.INVOICED)


def test_the_apis_version_is_the_projects() -> None:
    project = tomllib.loads((CONTRACT_DIR.parent / "pyproject.toml").read_text(encoding="utf-8"))
    app_source = (CONTRACT_DIR.parent / "api" / "app.py").read_text(encoding="utf-8")
    assert f'version="{project["project"]["version"]}"' in app_source
