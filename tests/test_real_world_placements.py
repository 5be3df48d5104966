"""Placements as VTEX's real traffic carries them, where it is wider than the spec's file, over
real HTTP against a real worker and Temporal server.

Each one is answered 200 with a body valid against `responseOrderPlacement` and the order is
placed; what fulfillment uses (items' ids, quantities and prices, freight, the address a delivery
goes to) stays as strict as the spec. The bodies are modelled on VTEX's own examples and orders:
coordinates as numbers (`[-47.924747467041016, -15.832582473754883]`, as in VTEX's Checkout API
examples and its orders), `"documentType": null`, `"geoCoordinates": []` and `"unitMultiplier":
1.0000` (VTEX's help-center example of this very call and of its answer), price tags with a
decimal `rawValue` (VTEX's orders), a pickup point's address with no neighborhood or receiver.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.stack import (
    Stack,
    assert_matches_schema,
    new_order_id,
    placement_example,
    running_stack,
)
from tests.test_api import assert_error
from workflows.messages import OrderInput

LONGITUDE, LATITUDE = -47.924747467041016, -15.832582473754883


@pytest.fixture(scope="module")
async def stack(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One stack for the module: these tests only read their own orders."""
    async with running_stack(
        temporal_env, tmp_path_factory.mktemp("real-world"), late_call_window="1h"
    ) as running:
        yield running


def real_order(order_id: str, endpoint: str) -> dict[str, Any]:
    """A placement as a VTEX marketplace sends it: the fields the spec names, the ones it does
    not (ids, SLAs, selected addresses...), numbers where the spec says strings."""
    address = {
        "addressType": "residential",
        "receiverName": "Carla Mitne",
        "addressId": "5173902688152",
        "versionId": None,
        "entityId": None,
        "postalCode": "70297-400",
        "city": "Brasília",
        "state": "DF",
        "country": "BRA",
        "street": "SQS 308 Bloco C",
        "number": "104",
        "neighborhood": "Asa Sul",
        "complement": "",
        "reference": None,
        "geoCoordinates": [LONGITUDE, LATITUDE],
    }
    return {
        "marketplaceOrderId": order_id,
        "marketplaceServicesEndpoint": endpoint,
        "marketplacePaymentValue": 81736,
        "items": [
            {
                "id": "73246",
                "quantity": 1,
                "seller": "1",
                "commission": 0,
                "freightCommission": 0,
                "price": 80665,
                "bundleItems": [],
                "itemAttachment": {"name": None, "content": {}},
                "attachments": [],
                "priceTags": [
                    {
                        "name": "DISCOUNT@MARKETPLACE",
                        "value": -14235,
                        "isPercentual": False,
                        "identifier": "6b5c1ee8-9975-4dd9-9e01-096189da4fda",
                        "rawValue": -142.35,
                        "rate": None,
                        "jurisCode": None,
                    }
                ],
                "measurementUnit": "un",
                "unitMultiplier": 1,
                "isGift": False,
            }
        ],
        "paymentData": None,
        "clientProfileData": {
            "id": "clientProfileData",
            "email": "d9e820873bd643d1afe0af1a445f455f@ct.vtex.com.br",
            "firstName": "Regina",
            "lastName": "Saad",
            "documentType": "cpf",
            "document": "06362148851",
            "phone": "+5561996477171",
            "corporateName": None,
            "tradeName": None,
            "corporateDocument": None,
            "stateInscription": "",
            "corporatePhone": None,
            "isCorporate": False,
            "userProfileId": "29cf4dce-bfa5-46fc-93fb-51ef30f42067",
        },
        "shippingData": {
            "id": "shippingData",
            "address": address,
            "logisticsInfo": [
                {
                    "itemIndex": 0,
                    "itemId": "73246",
                    "selectedDeliveryChannel": "delivery",
                    "selectedSla": "Rápida",
                    "lockTTL": "10d",
                    "price": 1071,
                    "listPrice": 1071,
                    "deliveryWindow": None,
                    "deliveryCompany": "Total Express",
                    "shippingEstimate": "2bd",
                    "shippingEstimateDate": "2024-08-28T12:15:51.399Z",
                    "deliveryIds": [{"courierId": "totalexpress", "warehouseId": "1_1"}],
                }
            ],
            "selectedAddresses": [copy.deepcopy(address)],
            "trackingHints": None,
        },
        "marketingData": {
            "id": "marketingData",
            "utmSource": "google",
            "utmPartner": None,
            "utmMedium": "cpc",
            "utmCampaign": None,
            "coupon": "welcome8689",
            "utmiCampaign": "",
            "utmipage": None,
            "utmiPart": None,
            "marketingTags": [],
        },
        "openTextField": None,
    }


async def place(stack: Stack, body: Any) -> dict[str, Any]:
    """POST the body; assert 200, the schema and that the order is placed; the answer."""
    response = await stack.http.post("/pvt/orders", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert_matches_schema(answer, "responseOrderPlacement")
    order_id = body["marketplaceOrderId"]
    assert answer["orderId"] == f"SLR-{order_id}"
    assert (await stack.order(order_id))["status"] == "placed"
    return answer


async def workflow_input(stack: Stack, order_id: str) -> OrderInput:
    """What the order's workflow (and so the warehouse) was started with, from its history."""
    history = await stack.handle(order_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    (order,) = await stack.client.data_converter.decode(started.input.payloads, [OrderInput])
    assert isinstance(order, OrderInput)
    return order


async def test_a_real_order_with_numeric_geo_coordinates_is_placed(stack: Stack) -> None:
    order_id = new_order_id()
    body = real_order(order_id, stack.endpoint)

    answer = await place(stack, body)

    # The schema types coordinates as strings: echoed as the numbers' exact JSON text.
    coordinates = [str(LONGITUDE), str(LATITUDE)]
    assert coordinates == ["-47.924747467041016", "-15.832582473754883"]
    assert answer["shippingData"]["address"]["geoCoordinates"] == coordinates
    address = (await workflow_input(stack, order_id)).shipping_address
    assert address is not None
    assert address["geoCoordinates"] == coordinates
    # A price tag's decimal rawValue does not fit the answer's integer: left out, not rounded.
    (tag,) = answer["items"][0]["priceTags"]
    assert tag["value"] == -14235
    assert "rawValue" not in tag


async def test_numeric_strings_and_empty_coordinates_are_kept_as_sent(stack: Stack) -> None:
    for coordinates in (["-22.9443504", "-43.1825635"], []):
        order_id = new_order_id()
        body = placement_example(order_id, stack.endpoint)
        body["shippingData"]["address"]["geoCoordinates"] = coordinates

        answer = await place(stack, body)

        assert answer["shippingData"]["address"]["geoCoordinates"] == coordinates


@pytest.mark.parametrize(
    "how",
    ["addressType-pickup", "selectedDeliveryChannel"],
)
async def test_a_pickup_in_point_order_without_a_street_is_placed(stack: Stack, how: str) -> None:
    order_id = new_order_id()
    body = real_order(order_id, stack.endpoint)
    # A pickup point's address as VTEX's checkout holds it: no receiver, no neighborhood.
    point = {
        "addressType": "pickup" if how == "addressType-pickup" else "residential",
        "receiverName": None,
        "addressId": "20336",
        "isDisposable": True,
        "postalCode": "7000",
        "city": "Tandil",
        "state": "Buenos Aires",
        "country": "ARG",
        "street": None,
        "neighborhood": None,
        "complement": None,
        "reference": None,
        "geoCoordinates": [-59.13552, -37.32558],
    }
    body["shippingData"]["address"] = point
    info = body["shippingData"]["logisticsInfo"][0]
    info["selectedDeliveryChannel"] = "pickup-in-point" if how != "addressType-pickup" else None
    info["pickupStoreInfo"] = {"friendlyName": "Simplicity Tandil", "isPickupStore": True}

    answer = await place(stack, body)

    # The schema requires them in the answer's address: empty, as nothing was sent.
    echoed = answer["shippingData"]["address"]
    assert {echoed[field] for field in ("street", "number", "neighborhood", "receiverName")} == {""}
    assert echoed["postalCode"] == "7000"
    assert echoed["geoCoordinates"] == ["-59.13552", "-37.32558"]
    # The warehouse sees what was sent: no invented street, no unknown field.
    address = (await workflow_input(stack, order_id)).shipping_address
    assert address is not None
    assert "street" not in address and "number" not in address
    assert "isDisposable" not in address
    assert address["city"] == "Tandil"


async def test_unknown_fields_at_every_level_are_accepted_and_the_answer_stays_valid(
    stack: Stack,
) -> None:
    order_id = new_order_id()
    body = real_order(order_id, stack.endpoint)
    extra = {"x-marketplace-note": {"nested": [1, "two", None, {"three": 3.5}]}}
    body.update(extra)
    # Names the answer's schema types, at the top level: not echoed, so they cannot break it.
    body["customData"] = "not an object"
    body["allowMultipleDeliveries"] = "not a boolean"
    item = body["items"][0]
    item.update(extra)
    item["bundleItems"] = [{"id": 5, "name": "Gift wrap", "price": 0, "quantity": 1, **extra}]
    item["itemsAttachment"] = [{"name": "Engraving", "content": "Ana", **extra}]
    item["priceTags"][0].update(extra)
    body["clientProfileData"].update(extra)
    body["shippingData"].update(extra)
    body["shippingData"]["address"].update(extra)
    info = body["shippingData"]["logisticsInfo"][0]
    info.update(extra)
    info["deliveryWindow"] = {
        "startDateUtc": "2026-04-20T08:00:00+00:00",
        "endDateUtc": "2026-04-20T12:00:00+00:00",
        "listPrice": 10,
        "price": 0,
        "tax": 0,
        **extra,
    }
    body["paymentData"] = {"payments": [{"paymentSystem": "201", "value": 81736}], **extra}
    body["marketingData"].update(extra)
    # As VTEX's orders carry it: an object, where the spec says a string.
    body["openTextField"] = {"value": "T796 - gift for Debora", **extra}

    answer = await place(stack, body)

    assert "customData" not in answer and "allowMultipleDeliveries" not in answer
    echoed = answer["items"][0]
    for part in (
        echoed,
        echoed["bundleItems"][0],
        echoed["itemsAttachment"][0],
        echoed["priceTags"][0],
        answer["clientProfileData"],
        answer["shippingData"],
        answer["shippingData"]["address"],
        answer["shippingData"]["logisticsInfo"][0],
        answer["shippingData"]["logisticsInfo"][0]["deliveryWindow"],
        answer["paymentData"],
    ):
        assert part["x-marketplace-note"] == extra["x-marketplace-note"], part
    # Unknown fields stay out of what the workflow keeps.
    order = await workflow_input(stack, order_id)
    assert order.shipping_address is not None
    assert "x-marketplace-note" not in order.shipping_address
    assert "versionId" not in order.shipping_address


async def test_nulls_where_real_traffic_sends_them_are_accepted(stack: Stack) -> None:
    # VTEX's help-center example of this call, as it is, plus the nulls other orders carry.
    order_id = new_order_id()
    body = {
        "marketplaceOrderId": order_id,
        "marketplaceServicesEndpoint": stack.endpoint,
        "marketplacePaymentValue": 16080,
        "items": [
            {
                "id": "2",
                "quantity": 1,
                "seller": "1",
                "commission": 0,
                "freightCommission": 0,
                "price": 9990,
                "bundleItems": [],
                "itemAttachment": {"name": None, "content": {}},
                "attachments": [],
                "priceTags": [],
                "measurementUnit": None,
                "unitMultiplier": 0,
                "isGift": False,
            }
        ],
        "clientProfileData": {
            "id": "clientProfileData",
            "email": "32172239852@gmail.com.br",
            "firstName": "Júlio",
            "lastName": "Augusto de Oliveira",
            "documentType": None,
            "document": "11412787742",
            "phone": "399271258",
            "corporateName": None,
            "tradeName": None,
            "corporateDocument": None,
            "stateInscription": None,
            "corporatePhone": None,
            "isCorporate": None,
            "userProfileId": None,
        },
        "shippingData": {
            "id": "shippingData",
            "address": {
                "addressType": "Residencial",
                "receiverName": "Júlio Augusto de Oliveira",
                "addressId": "Casa",
                "postalCode": "13476103",
                "city": "Americana",
                "state": "SP",
                "country": "BRA",
                "street": "João Damázio Gomes",
                "number": "311",
                "neighborhood": "São José",
                "complement": None,
                "reference": "Bairro Praia Azul / Posto de Saúde 17",
                "geoCoordinates": [],
            },
            "logisticsInfo": [
                {
                    "itemIndex": 0,
                    "selectedSla": "Correios",
                    "lockTTL": "8d",
                    "shippingEstimate": None,
                    "price": 1090,
                    "deliveryWindow": None,
                    "deliveryCompany": None,
                    "selectedDeliveryChannel": None,
                }
            ],
            "updateStatus": None,
        },
        "paymentData": None,
        "marketingData": None,
        "openTextField": None,
    }

    answer = await place(stack, body)

    assert "documentType" not in answer["clientProfileData"]  # null in the schema's answer: out
    assert "shippingEstimate" not in answer["shippingData"]["logisticsInfo"][0]
    assert (await workflow_input(stack, order_id)).freight_value == 1090


async def test_attachments_the_answer_cannot_type_are_accepted_and_shaped_to_the_schema(
    stack: Stack,
) -> None:
    # VTEX's 2026 file types an item's attachments as objects with string id, name and url. Real
    # orders carry a customization's (`name` and `content`); nulls, numbers and non-objects are
    # accepted as before, and left out of the answer.
    order_id = new_order_id()
    body = real_order(order_id, stack.endpoint)
    customization = {"name": "Engraving", "content": {"Text": "Ana"}}
    body["items"][0]["attachments"] = [
        customization,
        {"id": 7, "name": None, "url": "https://example.com/a.jpg", "content": None},
        None,
        "gift wrap",
    ]

    answer = await place(stack, body)

    assert answer["items"][0]["attachments"] == [
        customization,
        {"url": "https://example.com/a.jpg", "content": None},
    ]
    again = await stack.http.post("/pvt/orders", json=body)
    assert again.status_code == 200, again.text  # the same placement, retried
    assert again.json() == answer


async def test_decimal_unit_multipliers_are_accepted_and_kept_out_of_the_answer(
    stack: Stack,
) -> None:
    # As VTEX writes them: 1.0000 (an integer, written as a decimal) and 0.3 (kg).
    for written, echoed in (("1.0000", 1), ("0.3", None)):
        order_id = new_order_id()
        body = json.dumps(real_order(order_id, stack.endpoint)).replace(
            '"unitMultiplier": 1', f'"unitMultiplier": {written}'
        )
        response = await stack.http.post(
            "/pvt/orders", content=body.encode(), headers={"Content-Type": "application/json"}
        )

        assert response.status_code == 200, response.text
        answer = response.json()
        assert_matches_schema(answer, "responseOrderPlacement")
        assert answer["items"][0].get("unitMultiplier") == echoed
        assert (await stack.order(order_id))["status"] == "placed"


def _changed(change: Any) -> dict[str, Any]:
    body = real_order(new_order_id(), "http://127.0.0.1:9/x")
    change(body)
    return body


def _item(**changes: Any) -> Any:
    return lambda body: body["items"][0].update(changes)


def _without_item_id(body: dict[str, Any]) -> None:
    del body["items"][0]["id"]


def _freight(price: Any) -> Any:
    return lambda body: body["shippingData"]["logisticsInfo"][0].update(price=price)


def _address(**changes: Any) -> Any:
    return lambda body: body["shippingData"]["address"].update(changes)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_item(quantity="1"), "items[0].quantity"),
        (_item(quantity=1.0), "items[0].quantity"),
        (_without_item_id, "items[0].id"),
        (_item(id=73246), "items[0].id"),
        (_item(price="80665"), "items[0].price"),
        (_item(price=806.65), "items[0].price"),
        (_freight("1071"), "shippingData.logisticsInfo[0].price"),
        (_item(unitMultiplier="1"), "items[0].unitMultiplier"),
        (_address(geoCoordinates=[True, False]), "shippingData.address.geoCoordinates[0]"),
        (_address(street=None), "shippingData.address"),
        (_address(neighborhood=None, number=None), "shippingData.address"),
        (_address(postalCode=None), "shippingData.address.postalCode"),
    ],
    ids=[
        "quantity-string",
        "quantity-decimal",
        "no-item-id",
        "item-id-number",
        "price-string",
        "price-decimal",
        "freight-string",
        "multiplier-string",
        "coordinates-booleans",
        "delivery-without-street",
        "delivery-without-number",
        "no-postal-code",
    ],
)
async def test_what_fulfillment_uses_stays_strict(stack: Stack, change: Any, field: str) -> None:
    body = _changed(change)

    response: httpx.Response = await stack.http.post("/pvt/orders", json=body)

    error = assert_error(response, 400, "InvalidRequest")
    assert error["details"][0]["field"] == field, error
    assert error["message"].startswith(field), error
    if field == "shippingData.address":
        assert "required for a delivery" in error["message"]
