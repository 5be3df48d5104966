"""Fulfillment simulation on the real API, from the catalog and the shipping table, in both of
VTEX's contexts; every answer valid against `responseFulfillmentSimulation`."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities import warehouse_store as store
from activities.catalog import Catalog, CatalogEntry
from api.catalog_check import read_offers
from api.errors import ApiError
from api.shipping import load_shipping_table
from tests.stack import Stack, assert_matches_schema, new_order_id, placement_example, running_stack

REPO = Path(__file__).resolve().parents[1]

PATH = "/pvt/orderForms/simulation"


@pytest.fixture(scope="module")
async def stack(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """The stack with a catalog of its own: no default stock, three SKUs."""
    async with running_stack(
        temporal_env, tmp_path_factory.mktemp("simulation"), default_stock=None
    ) as running:
        Catalog.from_settings(running.settings).load(
            [
                CatalogEntry(sku="shoe", name="Shoe", price=2499, list_price=2999, stock=10),
                CatalogEntry(sku="sock", name="Sock", price=990, stock=3),
                CatalogEntry(sku="gone", name="Sold out", price=500, stock=0),
            ]
        )
        yield running


def cart(*lines: tuple[str, int], **address: Any) -> dict[str, Any]:
    return {
        "items": [{"id": sku, "quantity": quantity, "seller": "1"} for sku, quantity in lines],
        "postalCode": None,
        "country": None,
        **address,
    }


async def simulate(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    response = await stack.http.post(PATH, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert_matches_schema(answer, "responseFulfillmentSimulation")
    return answer


async def test_indexing_answers_price_and_stock_of_known_skus(stack: Stack) -> None:
    answer = await simulate(stack, cart(("shoe", 1), ("unknown", 1), ("sock", 5)))

    items = {item["id"]: item for item in answer["items"]}
    assert set(items) == {"shoe", "sock"}  # the unknown SKU: unavailable, left out
    assert (items["shoe"]["price"], items["shoe"]["listPrice"]) == (2499, 2999)
    assert (items["shoe"]["requestIndex"], items["sock"]["requestIndex"]) == (0, 2)
    assert items["sock"]["quantity"] == 3  # 5 asked, 3 available
    logistics = {info["itemIndex"]: info for info in answer["logisticsInfo"]}
    assert (logistics[0]["stockBalance"], logistics[2]["stockBalance"]) == (10, 3)
    # Every SLA, at its lowest price.
    assert {sla["id"]: sla["price"] for sla in logistics[0]["slas"]} == {
        "Normal": 990,
        "Express": 1990,
        "Pickup": 0,
    }


async def test_checkout_answers_the_slas_that_reach_the_postal_code(stack: Stack) -> None:
    answer = await simulate(stack, cart(("shoe", 2), postalCode="01310-100", country="BRA"))

    (info,) = answer["logisticsInfo"]
    assert info["quantity"] == 2 and info["stockBalance"] == 10
    slas = {sla["id"]: sla for sla in info["slas"]}
    assert {name: sla["price"] for name, sla in slas.items()} == {
        "Normal": 990,
        "Express": 1990,
        "Pickup": 0,
    }
    assert slas["Express"]["shippingEstimate"] == "2bd"
    assert slas["Pickup"]["pickupStoreInfo"]["address"]["addressType"] == "pickup"
    assert {c["id"]: c["stockBalance"] for c in info["deliveryChannels"]} == {
        "delivery": 10,
        "pickup-in-point": 10,
    }
    assert (answer["postalCode"], answer["country"]) == ("01310-100", "BRA")

    farther = await simulate(stack, cart(("shoe", 1), postalCode="80250000", country="BRA"))
    assert [sla["id"] for sla in farther["logisticsInfo"][0]["slas"]] == ["Normal"]
    assert farther["logisticsInfo"][0]["slas"][0]["price"] == 1590


async def test_an_address_no_sla_reaches_means_no_stock(stack: Stack) -> None:
    for address in (
        {"postalCode": "10001", "country": "USA"},
        {"postalCode": "1", "country": "BRA"},
    ):
        answer = await simulate(stack, cart(("shoe", 1), **address))
        (info,) = answer["logisticsInfo"]
        assert (info["stockBalance"], info["slas"], info["quantity"]) == (0, [], 0)


async def test_a_sold_out_sku_is_there_with_no_stock(stack: Stack) -> None:
    answer = await simulate(stack, cart(("gone", 1), postalCode="01310100", country="BRA"))

    assert answer["items"][0]["quantity"] == 0
    assert answer["logisticsInfo"][0]["stockBalance"] == 0
    assert answer["logisticsInfo"][0]["slas"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{"id": "shoe", "quantity": 0, "seller": "1"}]}, "items[0].quantity"),
        ({"items": [{"id": "shoe", "quantity": "1", "seller": "1"}]}, "items[0].quantity"),
        ({"items": [{"quantity": 1, "seller": "1"}]}, "items[0].id"),
        ({"items": [{"id": "shoe", "quantity": 1, "seller": "1"}], "country": "BRAZIL"}, "country"),
    ],
)
async def test_a_malformed_simulation_is_a_400_naming_the_field(
    stack: Stack, body: dict[str, Any], field: str
) -> None:
    response = await stack.http.post(PATH, json=body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"][0]["field"] == field


async def test_a_missing_shipping_table_is_a_503_not_a_500(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(
        temporal_env, tmp_path, shipping_table=tmp_path / "missing.json"
    ) as stack:
        response = await stack.http.post(PATH, json=cart(("x", 1)))
    assert response.status_code == 503, response.text
    assert "missing.json" in response.json()["error"]["message"]


async def test_two_lines_of_one_sku_share_its_stock(stack: Stack) -> None:
    answer = await simulate(stack, cart(("sock", 2), ("sock", 2)))

    # 3 socks in all: the second line gets what the first left.
    assert [item["quantity"] for item in answer["items"]] == [2, 1]
    assert sum(info["quantity"] for info in answer["logisticsInfo"]) == 3


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda t: t["slas"][2].pop("pickupStore"), "pickupStore"),
        (lambda t: t["slas"][2]["pickupStore"].pop("addressId"), "addressId"),
        (lambda t: t["slas"][2]["pickupStore"].update(friendlyName=None), "friendlyName"),
        (lambda t: t["slas"][0]["prices"][0].update(postalCodeTo="3999999"), "as many digits"),
        (lambda t: t["slas"][0]["prices"][0].update(postalCodeFrom="50000000"), "comes after"),
        (lambda t: t["slas"][0].update(shippingEstimate="soon"), "shippingEstimate"),
    ],
)
def test_a_shipping_table_that_would_answer_off_the_schema_is_refused(
    tmp_path: Path, change: Any, named: str
) -> None:
    table = json.loads((REPO / "catalog" / "shipping.json").read_text())
    change(table)
    path = tmp_path / "shipping.json"
    path.write_text(json.dumps(table))

    with pytest.raises(ValueError, match=named):
        load_shipping_table(path)


async def test_a_catalog_that_cannot_be_read_is_a_503_for_placement_and_simulation(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    nowhere = f"postgresql+psycopg://nobody@127.0.0.1:{port}/warehouse"
    async with running_stack(
        temporal_env, tmp_path, default_stock=None, warehouse_url=nowhere
    ) as stack:
        simulated = await stack.http.post(PATH, json=cart(("shoe", 1)))
        placed = await stack.http.post(
            "/pvt/orders", json=placement_example(new_order_id(), stack.endpoint)
        )
    for response in (simulated, placed):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]


async def test_a_cart_longer_than_one_read_of_the_catalog_is_answered_whole(stack: Stack) -> None:
    skus = [f"many-{n:04}" for n in range(700)]  # the catalog is read 500 SKUs at a time
    Catalog.from_settings(stack.settings).load(
        [CatalogEntry(sku=sku, name=sku, price=n + 1, stock=n) for n, sku in enumerate(skus)]
    )

    answer = await simulate(stack, cart(*[(sku, 1) for sku in [*skus, "unknown"]]))

    assert [item["id"] for item in answer["items"]] == skus
    assert [item["price"] for item in answer["items"]] == list(range(1, 701))
    assert [info["stockBalance"] for info in answer["logisticsInfo"]] == list(range(700))


async def test_the_catalogs_driver_failing_mid_read_is_a_503(
    warehouse_store: str | Path,
) -> None:
    catalog = Catalog(warehouse_store)
    catalog.load([CatalogEntry(sku="shoe", name="Shoe", price=2499, stock=1)])
    with store.engine_for(catalog.url).begin() as connection:
        connection.exec_driver_sql("DROP TABLE catalog")  # every read of it fails in the driver

    with pytest.raises(ApiError) as refused:
        await read_offers(catalog, ["shoe"])
    assert refused.value.status == 503
