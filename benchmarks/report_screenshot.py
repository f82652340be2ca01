"""Screenshot a report page (``DIR/index.html``) in headless Chromium and time the load.

Runs Debian's ``chromium`` directly (no driver): ``--headless --screenshot`` writes a PNG of
the page at ``--width`` × ``--height`` pixels, with ``--enable-logging=stderr`` so that console
messages appear in Chromium's log (the page has no script: any console message is an error).
Chromium does not log failed image loads there, so every ``<img>`` is also checked to be a
data URI that decodes to a PNG. The script fails (exit 1) on a console message, an image that
is not an inline PNG, or no screenshot.

Run:  python benchmarks/report_screenshot.py REPORT_DIR [--out PNG] [--width 1280] [--height 4000]
Prints one JSON object: page size in KiB, number of images, wall time of the load in seconds,
screenshot path and the errors found.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CONSOLE = re.compile(r":CONSOLE[:(]|Uncaught|Failed to load resource")
_IMG = re.compile(r"<img\s[^>]*src=\"([^\"]*)\"")
_PNG = b"\x89PNG\r\n\x1a\n"


def screenshot(page: Path, out: Path, width: int, height: int) -> dict[str, object]:
    """Load ``page`` in headless Chromium, write ``out``; the load's figures and errors."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="flq-chromium-") as profile:
        started = time.perf_counter()
        result = subprocess.run(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--screenshot={out}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=False)
        seconds = time.perf_counter() - started
    errors = [line for line in result.stderr.splitlines() if _CONSOLE.search(line)]
    html = page.read_text(encoding="utf-8")
    errors += [f"image is not an inline PNG: {src[:60]}" for src in _IMG.findall(html)
               if not _inline_png(src)]
    return {"page": str(page), "page_kib": round(page.stat().st_size / 1024, 1),
            "images": len(_IMG.findall(html)),
            "load_and_screenshot_s": round(seconds, 2), "screenshot": str(out),
            "screenshot_written": out.is_file() and out.stat().st_size > 0,
            "chromium_exit": result.returncode, "errors": errors}


def _inline_png(src: str) -> bool:
    prefix = "data:image/png;base64,"
    if not src.startswith(prefix):
        return False
    try:
        return base64.b64decode(src[len(prefix):], validate=True).startswith(_PNG)
    except ValueError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG (default DIR/screenshot.png)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args()
    page = args.report_dir / "index.html"
    if not page.is_file():
        print(f"error: {page} does not exist; run `flq-audit report STORE --out DIR` first",
              file=sys.stderr)
        return 3
    figures = screenshot(page, args.out or args.report_dir / "screenshot.png", args.width,
                         args.height)
    print(json.dumps(figures, indent=2))
    return 0 if figures["screenshot_written"] and not figures["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
