"""Pictures of the Temporal UI for the README: the workflow list filtered by `OrderStatus`,
rendered by headless Chromium (Debian's `chromium`, installed with apt when it is missing).

One order's page is not taken yet: headless Chromium rendered it blank (the page never settles
within --virtual-time-budget, and --timeout caught it before its first paint).

Against a running `make run` (its UI on TEMPORAL_UI_PORT, 8233):

    .venv/bin/python -m devtools.ui_pictures [--out docs] [--status canceled]

It places nothing itself: run the README's "Try it" steps first, so there are orders to show.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

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
