#!/usr/bin/env python3
"""Render a slimq report JSON to its HTML page and screenshot it with headless Chromium.

Usage: python scripts/report_screenshot.py MODEL.onnx.report.json OUT.png [--width 1280] [--height 2400]

The HTML is written beside OUT.png (OUT.html). Needs Chromium (Debian: apt-get install chromium;
scripts/setup.sh installs it). Exit 2 when Chromium is missing or the screenshot fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from slimq.report.html import render_html
from slimq.report.schema import Report

BROWSERS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


def find_browser() -> str | None:
    for b in BROWSERS:
        path = shutil.which(b)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 2400, timeout: float = 120.0) -> None:
    """Screenshot a local HTML file (no network: every Chromium background fetch is turned off)."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("Chromium was not found; install it (Debian: apt-get install chromium).")
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimq-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png.resolve()}",
               f"--window-size={width},{height}", html.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("report", type=Path, help="a <model>.report.json written by slimq")
    ap.add_argument("png", type=Path, help="where to write the screenshot")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args(argv)
    report = Report.from_dict(json.loads(args.report.read_text(encoding="utf-8")))
    html = args.png.with_suffix(".html")
    html.write_text(render_html(report), encoding="utf-8")
    try:
        screenshot(html, args.png, args.width, args.height)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"report_screenshot: {e}", file=sys.stderr)
        return 2
    print(f"wrote {html} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
