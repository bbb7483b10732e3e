"""Headless Chromium for the UI tests: the rendered DOM (after the React app ran) and screenshots.

Chromium's virtual time budget lets the page run its scripts and requests for that much time before the DOM is
dumped or the screenshot taken, so no DevTools client is needed. `$LRA_CHROMIUM` names the binary
(.ci/services/chromium.sh exports it), else `chromium` on the PATH.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--disable-dev-shm-usage")


def chromium() -> Optional[str]:
    """The Chromium binary, or None when there is none."""
    configured = os.environ.get("LRA_CHROMIUM")
    if configured and Path(configured).exists():
        return configured
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = chromium()
    assert binary is not None, "no chromium"
    with tempfile.TemporaryDirectory(prefix="lra-chromium-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def render_dom(url: str, *, width: int = 3000, height: int = 1200, budget_ms: int = 20000,
               timeout: float = 180) -> str:
    """The page's DOM once its scripts ran for `budget_ms` of virtual time (a wide window: the runs table
    renders only the columns that fit)."""
    result = _run([f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                  timeout)
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout


def visible_text(dom: str) -> str:
    """The DOM's text: scripts and styles dropped, tags replaced by spaces, whitespace collapsed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text))).strip()


def screenshot(url: str, path: Path, *, width: int = 1600, height: int = 900, budget_ms: int = 20000,
               timeout: float = 180) -> Path:
    """A PNG of the page once its scripts ran for `budget_ms` of virtual time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    result = _run([f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
                   f"--screenshot={path}", url], timeout)
    assert result.returncode == 0 and path.is_file(), result.stderr[-2000:]
    return path
