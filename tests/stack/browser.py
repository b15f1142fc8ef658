"""Headless Chromium driven over the DevTools protocol (CDP): cookies, navigation, DOM text, PNG.

Only what the UI tests need, on top of ``websocket-client`` (already in the lock through Mage):
start ``chromium --headless`` in its own process group with a fresh profile, open a page, set a
cookie (Mage keeps its login token in the ``oauth_token`` cookie), wait until the page's text
contains what we look for, save a screenshot and stop the browser group.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import websocket

CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-allow-origins=*",
    "--window-size=1400,900",
)


def chromium_binary() -> str:
    """The Debian ``chromium`` (``apt-get install -y chromium``); fails with the install command."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("Chromium is missing: apt-get update && apt-get install -y chromium")


class Page:
    """One browser tab, driven through its DevTools websocket."""

    def __init__(self, ws_url: str) -> None:
        self._ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a CDP method and return its result (events received meanwhile are dropped)."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def set_cookie(self, url: str, name: str, value: str) -> None:
        self.send("Network.setCookie", url=url, name=name, value=value, path="/")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def text(self) -> str:
        """The visible text of the document (``innerText``)."""
        result = self.send("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                           returnByValue=True)
        return str(result.get("result", {}).get("value") or "")

    def wait_for_text(self, needles: list[str], timeout: float = 60.0) -> str:
        """Poll the page text until every needle appears; returns the text (raises on timeout)."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(1.0)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"page never showed {missing}; its text was:\n{text[:3000]}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._ws.close()


class Browser:
    """A headless Chromium in its own process group; ``page()`` opens a tab."""

    def __init__(self, proc: subprocess.Popen[bytes], profile: Path) -> None:
        self.proc = proc
        self.profile = profile
        self.endpoint = self._endpoint()

    def _endpoint(self, timeout: float = 60.0) -> str:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if port_file.exists():
                lines = port_file.read_text().splitlines()
                if lines and lines[0].isdigit():
                    return f"http://127.0.0.1:{lines[0]}"
            time.sleep(0.2)
        raise RuntimeError("chromium did not open its DevTools port")

    @contextmanager
    def page(self, width: int = 1400, height: int = 900) -> Iterator[Page]:
        req = urllib.request.Request(f"{self.endpoint}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=30) as resp:
            target = json.loads(resp.read())
        page = Page(target["webSocketDebuggerUrl"])
        try:
            page.send("Page.enable")
            page.send("Network.enable")
            page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
            yield page
        finally:
            page.close()


@contextmanager
def chromium(profile: Path) -> Iterator[Browser]:
    """Start headless Chromium with a fresh profile dir; stop its whole process group on exit."""
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
           "about:blank"]
    proc = subprocess.Popen(  # noqa: S603
        cmd, stdout=subprocess.DEVNULL, stderr=open(profile / "chromium.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        yield Browser(proc, profile)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL what is left after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc.poll()  # reap our own leader
            if not group_members(proc.pid):
                break
            time.sleep(0.2)
        else:
            continue
        break
    proc.poll()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``."""
    import psutil

    members: list[int] = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.info["pid"]) == pgid:
                members.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return members
