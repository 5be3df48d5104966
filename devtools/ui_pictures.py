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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent


def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing."""
    found = shutil.which("chromium")
    if found:
        return found
    print("installing Debian's chromium with apt-get (once)...", flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    found = shutil.which("chromium")
    if not found:
        sys.exit("chromium is still missing after apt-get install chromium")
    return found


def screenshot(browser: str, url: str, target: Path, size: str = "1400,900") -> None:
    """Render `url` headless, waiting for the page's scripts, and write a PNG."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
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
