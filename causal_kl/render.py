"""Render a report to a PNG screenshot with headless Chromium, to look at it as a user would.

``python -m causal_kl.render results/demo/report.html /tmp/report.png`` (Chromium must be
installed: ``apt-get install -y chromium``). Offline: background networking is switched off,
and the report itself has no external resources.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from causal_kl.errors import CausalKLError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise CausalKLError(None, "chromium", "no headless browser found on PATH",
                        "apt-get install -y chromium (or put chromium/google-chrome on PATH)")


def render(html: str | Path, png: str | Path, width: int = 1400, height: int = 4000, timeout: int = 120) -> Path:
    """Screenshot ``html`` (a local file) into ``png`` at ``width × height`` CSS pixels; return ``png``."""
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.exists():
        raise CausalKLError(html, None, "report not found", f"build it first: snakemake {html}")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}",
               html.as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    return png


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", nargs="?", default="results/demo/report.html")
    ap.add_argument("png", nargs="?", default="report.png")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=4000)
    a = ap.parse_args(argv)
    print(render(a.html, a.png, a.width, a.height))


if __name__ == "__main__":
    main()
