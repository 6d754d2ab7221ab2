"""Headless Chromium (Debian package ``chromium``) driven over the DevTools protocol, for the
tests that open the Prefect UI: ``make resources`` installs it when apt-get is available as
root; without it those tests skip (``CHROMIUM`` is None).

Flags: ``--headless --no-sandbox --disable-gpu --disable-background-networking
--disable-component-update --disable-sync``, a fresh profile, a loopback DevTools port.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

from label_pipeline.testing import free_port, stop_process_group

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = (
    "chromium is not installed and could not be: `make resources` installs the Debian "
    "package chromium with apt-get when run as root; elsewhere install Chromium yourself"
)


class Browser:
    """Headless Chromium driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        port = free_port()
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1400,2400",
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.3)
        from websockets.sync.client import connect

        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str) -> object:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float = 90) -> object:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {expression!r}; page text:\n{self.text()}")

    def text(self) -> str:
        return str(self.js("document.body ? document.body.innerText : ''") or "")

    def close(self) -> None:
        with suppress(Exception):
            self.ws.close()
        stop_process_group(self.proc, wait_s=10)

    def screenshot(self, target: Path) -> Path:
        """The visible part of the page as a PNG at ``target``."""
        shot = self.call("Page.captureScreenshot", format="png")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(shot["data"]))
        return target
