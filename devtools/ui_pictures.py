"""Pictures of the Temporal UI for the README: the workflow list filtered by `OrderStatus`,
rendered by headless Chromium (Debian's `chromium`, installed with apt when it is missing).

An order's page is not taken with `--screenshot`: it keeps polling, so headless Chromium never
sees it settle within --virtual-time-budget. `Page` drives it over the DevTools protocol instead
(deploy_test.py, for docs/compose-ui-order.png); that needs `websockets`, the deploy-test extra.

Against a running `make run` (its UI on TEMPORAL_UI_PORT, 8233):

    .venv/bin/python -m devtools.ui_pictures [--out docs] [--status canceled]

It places nothing itself: run the README's "Try it" steps first, so there are orders to show.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from devtools.system_packages import ensure

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


def main(argv: list[str] | None = None) -> None:
    """Take the README's pictures."""
    parser = argparse.ArgumentParser(description="Pictures of the Temporal UI for the README.")
    parser.add_argument(
        "--ui", default=f"http://127.0.0.1:{os.environ.get('TEMPORAL_UI_PORT', '8233')}"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--status", default="canceled")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    query = f'OrderStatus="{args.status}"'
    screenshot(
        browser,
        f"{args.ui}/namespaces/default/workflows?query={quote(query)}",
        args.out / "ui-orders-by-status.png",
    )


if __name__ == "__main__":
    main()
