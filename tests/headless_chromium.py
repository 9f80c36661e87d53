"""Open a local HTML file in headless Chromium and report what a reader's browser would see.

Chromium is driven over the Chrome DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages ended by a NUL byte, Chromium reading fd 3 and writing fd 4), so nothing but the standard
library and the `chromium` binary is needed, and no port is opened.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TIMEOUT_S = 60.0


@dataclass
class PageLoad:
    """What happened while the page loaded, and what it showed."""

    errors: list[str]  # console errors, uncaught exceptions, resources that failed to load
    requests: list[str]  # the URL of every request the page made (the page itself included)
    images: list[dict]  # per <img>: {"scheme", "complete", "naturalWidth", "naturalHeight"}
    screenshot: bytes  # PNG of the viewport (of the whole page with `full_page`)
    height: int = 0  # the page's height in CSS pixels (document.documentElement.scrollHeight)
    boxes: list[dict] = field(default_factory=list)  # per <img>: {"alt", "x", "y", "width", "height"} on the page


def chromium() -> str:
    """The Chromium binary; fails the test (never skips it) when there is none."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: the report tests open the page in a real browser; "
                    "install it with `apt-get install -y chromium` (Debian's package)", pytrace=False)
    return path


def load(page: Path, width: int = 1200, height: int = 900, full_page: bool = False) -> PageLoad:
    """Load `page` (a file) in a fresh headless Chromium of `width` x `height` CSS pixels; with
    `full_page`, the screenshot is of the whole page, however long."""
    with tempfile.TemporaryDirectory() as profile, _Browser(profile) as browser:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session)
        browser.wait_for("Page.loadEventFired")
        images = browser.call("Runtime.evaluate", {"returnByValue": True, "expression": """
            [...document.images].map(i => ({scheme: i.src.split(':')[0], complete: i.complete,
                                            naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))"""},
                              session)["result"]["value"]
        layout = browser.call("Runtime.evaluate", {"returnByValue": True, "expression": """
            ({height: document.documentElement.scrollHeight,
              boxes: [...document.images].map(i => { const r = i.getBoundingClientRect();
                return {alt: i.alt, x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; })})"""},
                              session)["result"]["value"]
        if full_page:
            browser.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": layout["height"],
                                                                "deviceScaleFactor": 1, "mobile": False}, session)
        shot = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, session)["data"])
        return PageLoad(browser.errors, browser.requests, images, shot, layout["height"], layout["boxes"])


class _Browser:
    """One Chromium process and its DevTools pipe; remembers errors and requests as events arrive."""

    def __init__(self, profile: str):
        # Chromium wants the pipe on fds 3 and 4: move ours above 10 first, so that setting up the
        # child's 3 and 4 cannot overwrite one of them.
        to_chrome_r, self._to_chrome = map(_high, os.pipe())
        self._from_chrome, from_chrome_w = map(_high, os.pipe())

        def child_fds():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.process = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--no-default-browser-check", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=child_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._next_id, self._events = b"", 0, []
        self.errors: list[str] = []
        self.requests: list[str] = []

    def __enter__(self) -> _Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._send("Browser.close", {})
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._to_chrome)
            os.close(self._from_chrome)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (events that arrive meanwhile are recorded)."""
        sent = self._send(method, params or {}, session)
        while True:
            message = self._read()
            if message.get("id") == sent:
                if "error" in message:
                    raise RuntimeError(f"chromium: {method}: {message['error']}")
                return message["result"]
            self._record(message)

    def wait_for(self, event: str) -> None:
        while True:
            message = self._read()
            self._record(message)
            if message.get("method") == event:
                return

    def _send(self, method: str, params: dict, session: str | None = None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _read(self) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError(f"chromium sent nothing for {TIMEOUT_S:.0f} s")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed its DevTools pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _record(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"log: {params['entry']['text']} ({params['entry'].get('url', '')})")
        elif method == "Network.loadingFailed":
            self.errors.append(f"failed to load: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])


def _high(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new
