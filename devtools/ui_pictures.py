"""Pictures of the Temporal UI for the README, rendered by headless Chromium (Debian's
`chromium`, installed with apt when it is missing), and the proof that the UI sends the operators'
actions.

Against a running `make run` (its UI on TEMPORAL_UI_PORT, 8233; its API on API_PORT, 8000):

    .venv/bin/python -m devtools.ui_pictures [--out docs] [--status canceled]

takes the workflow list filtered by `OrderStatus` (docs/ui-orders-by-status.png). It places
nothing itself: run the README's "Try it" steps first, so there are orders to show.

    .venv/bin/python -m devtools.ui_pictures --send-update 1138342255800-01 [--update ...]

sends an operator's action to that order from the UI as a person does (More Actions -> Send an
Update, the update picked in its Name list, `{"by": "ui-check", "reason": ...}` typed as its Data,
Submit), then checks that the UI had the codec encrypt the input (its POST to the codec's
`/encode`, the input stored `binary/encrypted` in the history), that the order records the action
(`GET /pvt/orders/SLR-...`: `operatorActions`, and for resend_invoice `invoice.resentCount` one
more) and writes docs/ui-send-update.png (the dialog filled in, and the answer). Any of these that
does not hold ends it with a message and exit status 1. The order must be invoiced and its
invoice taken (README, "Operators' actions"). Chromium is driven over the DevTools protocol,
which needs `websockets`, the deploy-test extra:
`.venv/bin/uv sync --frozen --extra dev --extra deploy-test`.

The order's page itself is not taken with `--screenshot`: it keeps polling, so headless Chromium
never sees it settle within --virtual-time-budget. `Page` drives it instead (as deploy_test.py
does for docs/compose-ui-order.png).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from devtools.system_packages import ensure
from workflows import ids
from workflows.messages import OperatorActionName

ROOT = Path(__file__).resolve().parent.parent


# Headless Chromium as root on a machine that reaches no other network: no sandbox (root), and none
# of its background connections (refused here, many at a time).
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing."""
    return ensure("chromium", "chromium")


def screenshot(browser: str, url: str, target: Path, size: str = "1400,900") -> None:
    """Render `url` headless, waiting for the page's scripts, and write a PNG."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                *HEADLESS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                "--virtual-time-budget=15000",
                f"--screenshot={target}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"{target}  <-  {url}")


class PageFailed(Exception):
    """The page did not show, or let us do, what was expected of it."""


def visible(selector: str, text: str | None = None) -> str:
    """A JavaScript expression for the first element matching `selector` that is on screen (a
    page may keep hidden copies, e.g. for narrow screens), whose text is `text` if given."""
    return (
        f"[...document.querySelectorAll({json.dumps(selector)})].find(e => {{"
        " const box = e.getBoundingClientRect();"
        " return box.width > 0 && box.height > 0"
        f" && ({json.dumps(text)} === null"
        f" || (e.innerText || '').trim() === {json.dumps(text)}); }})"
    )


class Page:
    """One tab of headless Chromium, driven over the DevTools protocol (CDP): what a person does
    (click, type) as input events, what they see read from the page."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = iter(range(1, 1_000_000))
        # The requests the page sent, (method, url), once `Network.enable` was called.
        self.requests: list[tuple[str, str]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """A CDP command's result; the events that arrive meanwhile are dropped, but requests."""
        number = next(self._ids)
        await self._socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(await self._socket.recv())
            if message.get("method") == "Network.requestWillBeSent":
                request = message["params"]["request"]
                self.requests.append((request["method"], request["url"]))
            if message.get("id") == number:
                if "error" in message:
                    raise PageFailed(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        found = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in found:
            raise PageFailed(f"{expression[:300]}: {found['exceptionDetails']}")
        return found.get("result", {}).get("value")

    async def text(self, limit: int = 1500) -> str:
        """What the page shows, as text (to say what it showed instead)."""
        return str(await self.evaluate("document.body ? document.body.innerText : ''"))[:limit]

    async def wait_for(self, expression: str, what: str, within: float = 60) -> Any:
        """The first truthy value of `expression`, polled; PageFailed naming `what` after
        `within` seconds, with what the page shows."""
        deadline = time.monotonic() + within
        while True:
            error: PageFailed | None = None
            try:
                value = await self.evaluate(expression)
            except PageFailed as err:  # e.g. no document.body yet, while a page loads
                value, error = None, err
            if value:
                return value
            if time.monotonic() > deadline:
                raise PageFailed(
                    f"{what}: not within {within:.0f} s"
                    f"{f' ({str(error)[-300:]})' if error else ''}; "
                    f"the page shows: {await self.text()!r}"
                )
            await asyncio.sleep(0.5)

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def click(
        self, selector: str, what: str, text: str | None = None, within: float = 30
    ) -> None:
        """Click the middle of the element `visible(selector, text)` names, once it shows and
        stays put (a menu or a dialog that opens moves its items for a moment), with the mouse:
        the page's own handlers see a person's click."""
        where = f"""(() => {{
            const element = {visible(selector, text)};
            if (!element) return null;
            element.scrollIntoView({{block: 'nearest'}});
            const box = element.getBoundingClientRect();
            return [box.x + box.width / 2, box.y + box.height / 2];
        }})()"""
        x, y = await self.wait_for(where, what, within)
        while True:
            await asyncio.sleep(0.3)
            now = await self.wait_for(where, what, within)
            if now == [x, y]:
                break
            x, y = now
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def type(self, text: str) -> None:
        """Type `text` where the focus is (as an input method does: one input event)."""
        await self.call("Input.insertText", text=text)

    async def press_tab(self) -> None:
        """The Tab key: the focus leaves the element that has it."""
        for kind in ("keyDown", "keyUp"):
            await self.call(
                "Input.dispatchKeyEvent", type=kind, key="Tab", code="Tab", windowsVirtualKeyCode=9
            )

    async def box(self, selector: str) -> dict[str, float]:
        """Where `visible(selector)` is, as a screenshot's clip."""
        found = await self.evaluate(
            f"(() => {{ const box = {visible(selector)}.getBoundingClientRect();"
            " return {x: box.x, y: box.y, width: box.width, height: box.height}; })()"
        )
        return dict(found)

    async def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        """The viewport (or its `clip`: x, y, width, height) as a PNG."""
        params: dict[str, Any] = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        shot = await self.call("Page.captureScreenshot", **params)
        return base64.b64decode(shot["data"])


@contextmanager
def headless_chromium() -> Iterator[str]:
    """A fresh headless Chromium (its own profile; stopped with its helpers at the end): the
    DevTools socket of its one tab, for `open_page`."""
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [
                chromium(),
                *HEADLESS,
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helpers too are stopped at the end
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text().strip():
                if time.monotonic() > deadline or browser.poll() is not None:
                    raise PageFailed("Chromium opened no DevTools port within 30 s")
                time.sleep(0.2)
            port = port_file.read_text().split()[0]
            tabs = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            yield next(tab["webSocketDebuggerUrl"] for tab in tabs if tab["type"] == "page")
        finally:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(10)


@asynccontextmanager
async def open_page(socket_url: str, width: int = 1400, height: int = 1100) -> AsyncIterator[Page]:
    """The tab of `headless_chromium`, `width` x `height`, driven over CDP. Needs `websockets`
    (the deploy-test extra)."""
    try:
        import websockets
    except ImportError as err:
        raise PageFailed(
            "websockets is missing (the deploy-test extra): "
            ".venv/bin/uv sync --frozen --extra dev --extra deploy-test"
        ) from err
    async with websockets.connect(socket_url, max_size=64 * 1024 * 1024) as socket:
        page = Page(socket)
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield page


# --- an operator's action sent from the UI -----------------------------------------------------

# The order's updates that are operators' actions, by their update name: resend_invoice, ...
OPERATOR_UPDATES = {action.name.lower(): action for action in OperatorActionName}
DIALOG = "dialog#update-confirmation-modal"  # the UI's "Send an Update" dialog


@dataclass
class SentUpdate:
    """An operator's action to send from the UI, and where the stack of `make run` listens."""

    order: str  # the marketplaceOrderId
    update: str
    by: str
    reason: str
    ui: str
    api: str
    temporal: str
    update_id: str = ""

    def __post_init__(self) -> None:
        # Named like the ops listener's and the command's ({action}-{requestId}), so the history
        # tells the one this check sent.
        self.update_id = self.update_id or (
            f"{OPERATOR_UPDATES[self.update].value}-ui-check-{uuid.uuid4().hex[:8]}"
        )


async def _send_from_ui(page: Page, sent: SentUpdate) -> tuple[bytes, bytes]:
    """Click through the UI's Send an Update; the pictures of the dialog filled in and of the
    page once the UI said the update succeeded. PageFailed if it did not."""
    workflow = ids.workflow_id(sent.order)
    url = f"{sent.ui}/namespaces/default/workflows/{workflow}"
    await page.call("Network.enable")
    await page.navigate(url)
    more_actions = 'button[aria-controls="workflow-actions"]'
    await page.wait_for(
        f"document.body.innerText.includes({json.dumps(workflow)}) && !!{visible(more_actions)}",
        f"the order's page {url} with its More Actions button",
    )
    await page.click(more_actions, "More Actions")
    await page.click('li[data-testid="update-button"]', "More Actions > Send an Update", within=10)
    await page.wait_for(f"!!{visible(DIALOG)}", "the Send an Update dialog", within=10)

    # Name: a list of the workflow's updates when a worker answered the UI's metadata query,
    # else a text field.
    names = f"{DIALOG} [data-testid=update-select-button]"
    if await page.evaluate(f"!!{visible(names)}"):
        await page.click(names, "the dialog's Name list")
        options = f"{DIALOG} li[role=option]"
        offered = await page.wait_for(
            f"[...document.querySelectorAll({json.dumps(options)})]"
            ".map(e => e.innerText.trim()).filter(Boolean)",
            "the Name list's updates",
            within=10,
        )
        if sent.update not in offered:
            raise PageFailed(f"the Name list offers {offered}, not {sent.update}")
        await page.click(options, f"{sent.update} in the Name list", text=sent.update)
        chosen = await page.evaluate(f"{visible(DIALOG + ' input#update-select')}.value")
    else:
        print("the dialog has no list of updates (no worker answered?): typing the name")
        await page.click(f"{DIALOG} input#update-name", "the dialog's Name field")
        await page.type(sent.update)
        chosen = await page.evaluate(f"{visible(DIALOG + ' input#update-name')}.value")
    if chosen != sent.update:
        raise PageFailed(f"the dialog's Name shows {chosen!r}, not {sent.update!r}")
    await page.click(f"{DIALOG} input#update-id", "the dialog's Update ID")
    await page.type(sent.update_id)

    data = {"by": sent.by, "reason": sent.reason}
    editor = f"{DIALOG} [contenteditable=true][aria-label=Data]"
    await page.click(editor, "the dialog's Data editor")
    await page.type(json.dumps(data))
    # Leaving the editor formats its JSON, and the dialog grows: before Submit's click, which
    # would otherwise land where the button no longer is. (A click on the dialog's title would
    # close it.)
    await page.click(f"{DIALOG} *", "the Data's hint", text="Single JSON payload supported.")
    await asyncio.sleep(0.5)
    typed = await page.evaluate(f"{visible(editor)}.innerText")
    if json.loads(typed) != data:
        raise PageFailed(f"the dialog's Data shows {typed!r}, not {data}")
    submit = f"{DIALOG} button[data-testid=confirm-modal-button]"
    await page.wait_for(f"!{visible(submit)}.disabled", "the dialog's Submit enabled", within=10)
    box = await page.box(DIALOG)
    margin = 16
    filled = await page.screenshot(
        {
            "x": box["x"] - margin,
            "y": box["y"] - margin,
            "width": box["width"] + 2 * margin,
            "height": box["height"] + 2 * margin,
        }
    )

    await page.click(submit, "the dialog's Submit")
    # On success the dialog closes and a toast says so; a refusal (or a failed call) stays in
    # the dialog, in red. Its blue "In Progress" while the update runs is neither.
    outcome = await page.wait_for(
        f"""(() => {{
            const dialog = {visible(DIALOG)};
            if (dialog) {{
                const alerts = [...dialog.querySelectorAll(
                    '[role=alert].error, [role=alert].text-danger')]
                    .map(e => e.innerText.trim()).filter(Boolean);
                return alerts.length ? 'refused: ' + alerts.join(' ') : null;
            }}
            const toasts = [...document.querySelectorAll('[data-testid*=toast]')]
                .map(e => e.innerText.trim()).filter(Boolean);
            return toasts.length ? 'answered: ' + toasts.join(' ') : null;
        }})()""",
        "the UI's answer to Submit",
    )
    if outcome != "answered: Update successful":
        raise PageFailed(f"the UI did not send the update: {outcome[:1500]}")
    await asyncio.sleep(1)  # the timeline shows the update and what it started
    content = await page.box("main#content")
    answered = await page.screenshot(content)
    return filled, answered


async def _stacked(page: Page, first: bytes, second: bytes) -> bytes:
    """One picture of two, the first above the second."""
    both = "".join(
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
        'style="display:block;margin:0 auto 8px">'
        for png in (first, second)
    )
    html = f"<div id=both style=display:inline-block>{both}</div>"
    await page.navigate("about:blank")
    await page.evaluate(
        "(async () => { document.body.style.margin = '0'; "
        "document.body.style.background = '#f8fafc'; "
        f"document.body.innerHTML = {json.dumps(html)}; "
        "await Promise.all([...document.images].map(i => i.decode())); })()"
    )
    box = await page.box("#both")
    shot = await page.call(
        "Page.captureScreenshot",
        format="png",
        clip={**box, "scale": 1},
        captureBeyondViewport=True,
    )
    return base64.b64decode(shot["data"])


def _order(sent: SentUpdate) -> dict[str, Any]:
    path = f"/pvt/orders/{ids.seller_order_id(sent.order)}"
    response = httpx.get(sent.api + path, timeout=10)
    if response.status_code != 200:
        raise PageFailed(f"GET {path}: {response.status_code} {response.text[:300]}")
    return dict(response.json())


def _recorded(sent: SentUpdate, order: dict[str, Any]) -> list[dict[str, Any]]:
    action = OPERATOR_UPDATES[sent.update].value
    return [
        entry
        for entry in order.get("operatorActions") or []
        if entry["action"] == action and entry["by"] == sent.by and entry["reason"] == sent.reason
    ]


def _stored_input(sent: SentUpdate) -> dict[str, Any]:
    """The update's accepted and completed events in the order's history, as Temporal stores
    them (raw: the input as the UI sent it, after the codec)."""
    shown = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "temporal"),
            "workflow",
            "show",
            "--address",
            sent.temporal,
            "-w",
            ids.workflow_id(sent.order),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if shown.returncode != 0:
        raise PageFailed(f"temporal workflow show: {shown.stderr[:500]}")
    accepted = completed = None
    for event in json.loads(shown.stdout)["events"]:
        attributes = event.get("workflowExecutionUpdateAcceptedEventAttributes")
        if attributes and attributes["acceptedRequest"]["meta"]["updateId"] == sent.update_id:
            accepted = attributes["acceptedRequest"]
        attributes = event.get("workflowExecutionUpdateCompletedEventAttributes")
        if attributes and attributes["meta"]["updateId"] == sent.update_id:
            completed = attributes["outcome"]
    if accepted is None or completed is None or "success" not in completed:
        raise PageFailed(
            f"the history has no accepted and succeeded update {sent.update_id}: "
            f"{accepted=} {completed=}"
        )
    payload = accepted["input"]["args"]["payloads"][0]
    return {
        "name": accepted["input"]["name"],
        "encoding": base64.b64decode(payload["metadata"]["encoding"]).decode(),
        "key": base64.b64decode(payload["metadata"].get("encryption-key-id", "")).decode(),
    }


def send_update(sent: SentUpdate, picture: Path) -> None:
    """Send `sent` from the UI and check everything that should follow; PageFailed if not."""
    settings = httpx.get(f"{sent.ui}/api/v1/settings", timeout=10).json()
    for switch in ("DisableWriteActions", "WorkflowUpdateDisabled"):
        if settings.get(switch):
            raise PageFailed(f"the UI at {sent.ui} has {switch} on: it sends no update")
    codec = (settings.get("Codec") or {}).get("Endpoint")
    if not codec:
        raise PageFailed(f"the UI at {sent.ui} has no codec endpoint: payloads are not encrypted")
    before = _order(sent)
    resent_before = (before.get("invoice") or {}).get("resentCount")
    if sent.update == "resend_invoice" and not (before.get("invoice") or {}).get("sentAt"):
        # Then the resend is its first delivery, which resentCount does not count.
        raise PageFailed(f"order {before['orderId']} has no invoice taken yet: {before['status']}")
    print(
        f"order {before['orderId']}: {before['status']}, invoice.resentCount {resent_before}, "
        f"{len(_recorded(sent, before))} such action(s) by {sent.by}"
    )
    print(
        f"UI {sent.ui}, codec {codec}: More Actions > Send an Update > {sent.update}, "
        f"Update ID {sent.update_id}, Data {json.dumps({'by': sent.by, 'reason': sent.reason})}"
    )

    async def in_browser(tab: str) -> tuple[bytes, list[tuple[str, str]]]:
        async with open_page(tab) as page:
            filled, answered = await _send_from_ui(page, sent)
            requests = list(page.requests)
            return await _stacked(page, filled, answered), requests

    with headless_chromium() as tab:
        png, requests = asyncio.run(in_browser(tab))
    print("the UI answered: Update successful")
    encoded = [
        url for method, url in requests if method == "POST" and url.startswith(f"{codec}/encode")
    ]
    if not encoded:
        raise PageFailed(f"the page never POSTed to {codec}/encode")
    print(f"the page POSTed the input to {encoded[0]}")
    stored = _stored_input(sent)
    if stored["encoding"] != "binary/encrypted" or stored["name"] != sent.update:
        raise PageFailed(f"the update's input is stored as {stored}")
    print(
        f"the history holds update {sent.update_id} ({stored['name']}), completed; its input "
        f"stored {stored['encoding']} (key {stored['key']})"
    )

    deadline = time.monotonic() + 30
    while True:
        after = _order(sent)
        recorded = _recorded(sent, after)[len(_recorded(sent, before)) :]
        resent = (after.get("invoice") or {}).get("resentCount")
        done = bool(recorded) and (
            sent.update != "resend_invoice" or resent == (resent_before or 0) + 1
        )
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not done:
        raise PageFailed(
            f"order {after['orderId']} does not record it: invoice.resentCount {resent} "
            f"(was {resent_before}), operatorActions {after.get('operatorActions')}"
        )
    print(
        f"order {after['orderId']} records it: invoice.resentCount {resent}, operatorActions[-1]:"
    )
    print(json.dumps(recorded[-1], indent=2))
    picture.parent.mkdir(parents=True, exist_ok=True)
    picture.write_bytes(png)
    print(f"{picture}  <-  the dialog filled in, and the order's page once the UI answered")


def main(argv: list[str] | None = None) -> None:
    """Take the README's pictures, or send an operator's action from the UI (--send-update)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    env = os.environ.get
    parser.add_argument("--ui", default=f"http://127.0.0.1:{env('TEMPORAL_UI_PORT', '8233')}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--status", default="canceled")
    parser.add_argument(
        "--send-update",
        metavar="ORDER_ID",
        help="send an operator's action to this order (marketplaceOrderId or SLR-...) from the UI",
    )
    parser.add_argument("--update", choices=sorted(OPERATOR_UPDATES), default="resend_invoice")
    parser.add_argument("--by", default="ui-check")
    parser.add_argument("--reason", default="sent from the Temporal UI")
    parser.add_argument("--api", default=f"http://127.0.0.1:{env('API_PORT', '8000')}")
    parser.add_argument("--temporal", default=f"127.0.0.1:{env('TEMPORAL_PORT', '7233')}")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.send_update:
        order = args.send_update.removeprefix(ids.SELLER_ORDER_PREFIX)
        sent = SentUpdate(
            order, args.update, args.by, args.reason, args.ui, args.api, args.temporal
        )
        try:
            send_update(sent, args.out / "ui-send-update.png")
        except (PageFailed, httpx.HTTPError) as err:
            sys.exit(f"ui_pictures --send-update: FAILED: {err}")
        return
    browser = chromium()
    query = f'OrderStatus="{args.status}"'
    screenshot(
        browser,
        f"{args.ui}/namespaces/default/workflows?query={quote(query)}",
        args.out / "ui-orders-by-status.png",
    )


if __name__ == "__main__":
    main()
