"""Change notifications: the activity that tells the marketplace a SKU's price or stock changed.

A SKU's `SkuChangesWorkflow` (workflows/sku_changes.py) calls `notify_change` once a burst of its
changes has settled; change_relay.py feeds those workflows from the warehouse's outbox.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.marketplace import ChangeNotice, MarketplaceAnswer, MarketplaceClient
from activities.marketplace_hosts import HostPolicy
from workflows.messages import CamelModel

if TYPE_CHECKING:
    from config import Settings

# The SKU workflows run on a task queue of their own (ids.sku_task_queue), with few activity
# slots: a catalog load of thousands of SKUs while the marketplace is slow must not hold the slots
# that place orders.
NOTIFICATION_SLOTS = 10


class SkuNotification(CamelModel):
    """What the `notify_change` activity is asked: the SKU and what changed of it."""

    sku: str
    kind: str  # price | inventory


class ChangeNotificationActivities:
    """The one activity of the SKU workflows: the notification itself, to the marketplace the
    worker is configured with (so that fixing CHANGE_NOTIFICATION_URL or SELLER_ID reaches the
    notifications already waiting)."""

    def __init__(
        self, marketplace: MarketplaceClient, notification_url: str, seller_id: str
    ) -> None:
        self._marketplace = marketplace
        self._notification_url = notification_url
        self._seller_id = seller_id

    @activity.defn(name="notify_change")
    async def notify_change(self, request: SkuNotification) -> MarketplaceAnswer:
        """POST .../notificator/{sellerId}/changenotification/{skuId}/{price|inventory}."""
        if not (self._notification_url and self._seller_id):
            raise ApplicationError(
                "CHANGE_NOTIFICATION_URL and SELLER_ID are not both set on this worker",
                type="NotificationsNotConfigured",
                non_retryable=True,
            )
        notice = ChangeNotice(
            notification_url=self._notification_url,
            seller_id=self._seller_id,
            sku=request.sku,
            kind=request.kind,
        )
        answer = await self._marketplace.send_change_notification(notice)
        activity.logger.info(
            "%s change of SKU %s notified to the marketplace (%s)",
            notice.kind,
            notice.sku,
            answer.status_code,
        )
        return answer


def notification_settings_problem(settings: Settings) -> str | None:
    """Why no notification could be sent with these settings, or None. A worker with a problem
    runs no relay and no SKU worker: the changes wait in the outbox, none lost, until it is
    fixed (a notification sent to a wrong URL would be refused, and lost)."""
    if not settings.change_notifications_enabled:
        return "CHANGE_NOTIFICATION_URL and SELLER_ID are not both set"
    url = settings.change_notification_url
    refusal = HostPolicy.parse(settings.marketplace_allowed_hosts).refusal(url)
    if refusal:
        return f"CHANGE_NOTIFICATION_URL {refusal}"
    if urlsplit(url).path.rstrip("/") != "/api" or urlsplit(url).query:
        return (
            f"CHANGE_NOTIFICATION_URL {url} is not the marketplace's account API, "
            "https://{accountName}.vtexcommercestable.com.br/api"
        )
    return None
