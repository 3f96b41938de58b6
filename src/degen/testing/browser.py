"""Headless Chromium for tests of the offline HTML report: render, screenshot, DOM, and a
check that a page fetches nothing from the network.

Needs a Chromium (Debian: the ``chromium`` package; ``bash scripts/setup.sh --test``
installs it). Every run uses a fresh profile and sends all its traffic to a proxy inside
this process that answers every request with 403 and records it, so nothing leaves the
machine and ``network_requests`` can list what a page tried to fetch::

    dump_dom(Path("report.html"))              # the DOM after scripts ran
    screenshot(Path("report.html"), Path("report.png"))
    assert network_requests(Path("report.html")) == []
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

SETUP_HINT = "run `bash scripts/setup.sh --test` to install it"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--disable-dev-shm-usage", "--disable-extensions",
    "--disable-default-apps", "--no-default-browser-check", "--mute-audio",
    "--force-device-scale-factor=1", "--force-color-profile=srgb",
    # the network-time query goes out even with --disable-background-networking
    "--disable-features=NetworkTimeServiceQuerying,Translate,MediaRouter,OptimizationHints",
)
# Hosts Chromium itself contacts whatever the page (component and extension updates,
# account checks); ``network_requests`` leaves them out unless asked.
BROWSER_SERVICE_HOSTS = frozenset({
    "accounts.google.com", "clients1.google.com", "clients2.google.com",
    "update.googleapis.com", "redirector.gvt1.com", "safebrowsing.googleapis.com",
    "optimizationguide-pa.googleapis.com", "content-autofill.googleapis.com",
})


def find_chromium() -> str:
    """The first of chromium, chromium-browser, google-chrome on PATH; else RuntimeError."""
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    raise RuntimeError(f"no Chromium found ({', '.join(CHROMIUM_NAMES)}); {SETUP_HINT}")


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 2000,
               timeout: float = 60, budget_ms: int = 5000) -> Path:
    """Render ``html`` in a ``width`` x ``height`` window into the PNG file ``png``."""
    png = Path(png).resolve()
    png.unlink(missing_ok=True)
    _run(html, [f"--screenshot={png}", f"--window-size={width},{height}"], timeout, budget_ms)
    if not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"Chromium exited cleanly but wrote no screenshot to {png}")
    return png


def dump_dom(html: Path, timeout: float = 60, budget_ms: int = 5000) -> str:
    """The page's DOM as HTML once its scripts ran (``budget_ms`` of virtual time)."""
    out, _ = _run(html, ["--dump-dom"], timeout, budget_ms)
    if not out.strip():
        raise RuntimeError(f"Chromium printed no DOM for {html}")
    return out


def network_requests(html: Path, timeout: float = 60, budget_ms: int = 5000,
                     include_browser_services: bool = False) -> list[str]:
    """What loading ``html`` tried to fetch over the network, in arrival order: plain HTTP
    as ``"GET http://host/path"``, TLS (https, wss) as ``"CONNECT host:443"`` (the proxy
    sees only host and port). Empty for a page that works offline.

    Every request goes to the recording proxy (loopback included), so this catches
    scripts, styles, fonts, images, iframes, fetch/XHR and websockets alike. Not network
    requests and so not listed: ``data:``/``blob:`` URLs and ``file:`` paths, which
    includes protocol-relative ``//host/x`` refs, as a ``file:`` page resolves them to
    ``file://host/x``. Chromium's own calls home (``BROWSER_SERVICE_HOSTS``) are left
    out unless ``include_browser_services``."""
    _, requests = _run(html, ["--dump-dom"], timeout, budget_ms)
    if include_browser_services:
        return requests
    return [r for r in requests if _host(r) not in BROWSER_SERVICE_HOSTS]


def _host(request: str) -> str | None:
    method, _, target = request.partition(" ")
    if method == "CONNECT":
        return target.rpartition(":")[0].strip("[]") or None
    return urlsplit(target).hostname


class _RecordingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy on 127.0.0.1 that records each request line and answers 403."""

    daemon_threads = False
    block_on_close = True  # server_close() waits until every request is recorded

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def record(self, line: str) -> None:
        with self._lock:
            self.requests.append(line)


class _ProxyHandler(socketserver.StreamRequestHandler):
    timeout = 5
    server: _RecordingProxy

    def handle(self) -> None:
        try:
            line = self.rfile.readline(65537).decode("latin-1").strip()
            while self.rfile.readline(65537).strip():  # the headers
                pass
        except OSError:
            return
        if line:
            method, _, rest = line.partition(" ")
            self.server.record(f"{method} {rest.rsplit(' ', 1)[0]}")
            with contextlib.suppress(OSError):
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")


def _run(html: Path, args: Sequence[str], timeout: float,
         budget_ms: int) -> tuple[str, list[str]]:
    """Load ``html`` in a fresh headless Chromium with ``args``: (stdout, requests)."""
    html = Path(html).resolve()
    if not html.is_file():
        raise FileNotFoundError(f"no such HTML file: {html}")
    chromium = find_chromium()
    proxy = _RecordingProxy()
    serving = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05},
                               daemon=True)
    serving.start()
    try:
        with tempfile.TemporaryDirectory(prefix="degen-chromium-") as profile:
            argv = [chromium, *FLAGS, f"--user-data-dir={profile}",
                    f"--virtual-time-budget={budget_ms}",
                    f"--proxy-server=http://127.0.0.1:{proxy.port}",
                    "--proxy-bypass-list=<-loopback>",  # loopback goes to the proxy too
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                    *args, html.as_uri()]
            out, err, rc = _communicate(argv, timeout)
    finally:
        proxy.shutdown()
        proxy.server_close()
        serving.join()
    if rc != 0:
        raise RuntimeError(f"Chromium failed ({rc}) on {html}: {_tail(err)}")
    return out, list(proxy.requests)


def _communicate(argv: list[str], timeout: float) -> tuple[str, str, int]:
    """Run ``argv`` in its own process group, killed whole on timeout (Chromium's helper
    processes would outlive a kill of the main one)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise RuntimeError(f"Chromium did not finish within {timeout:.0f} s: "
                           f"{_tail(err)}") from None
    return out, err, proc.returncode


def _tail(stderr: str, n: int = 1500) -> str:
    """The end of Chromium's stderr without its routine dbus complaints."""
    lines = [ln for ln in stderr.splitlines()
             if "dbus" not in ln and "unexpected operator" not in ln]
    return " | ".join(lines)[-n:] or "(no error output)"
