"""The real system parts for tests: a throwaway PostgreSQL server and headless Chromium.

These fail (not skip) with a "run `bash scripts/setup.sh --test`" message when the
Debian packages are missing."""

from __future__ import annotations

import base64
import io
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from matplotlib import image as mpimg

from degen.testing import browser, postgres
from degen.testing.postgres import PostgresServer

# --- PostgreSQL


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def test_postgres_roundtrip(pg: PostgresServer) -> None:
    assert pg.url == f"postgresql+psycopg2://postgres@127.0.0.1:{pg.port}/degen_test"
    engine = sa.create_engine(pg.url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE trials (id serial PRIMARY KEY, value float)"))
            conn.execute(sa.text("INSERT INTO trials (value) VALUES (:v)"),
                         [{"v": 0.5}, {"v": 1.5}])
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, value FROM trials ORDER BY id")).all()
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == "degen_test"
        assert [tuple(r) for r in rows] == [(1, 0.5), (2, 1.5)]
    finally:
        engine.dispose()
    other = sa.create_engine(pg.create_database("other_db"))
    try:
        with other.connect() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == "other_db"
    finally:
        other.dispose()


def _listening(port: int) -> list[str]:
    """Local addresses of the sockets listening on TCP ``port`` (from /proc/net)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                # /proc prints the address as 32-bit words in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                fam = socket.AF_INET if len(words) == 4 else socket.AF_INET6
                found.append(socket.inet_ntop(fam, words))
    return found


def test_postgres_listens_on_loopback_only(pg: PostgresServer) -> None:
    assert _listening(pg.port) == ["127.0.0.1"]
    with socket.create_connection(("127.0.0.1", pg.port), timeout=2):
        pass
    # bound to 127.0.0.1 itself, not to all of 127/8 or to every address
    with pytest.raises(ConnectionRefusedError), socket.create_connection(
            ("127.0.0.2", pg.port), timeout=2):
        pass
    engine = sa.create_engine(pg.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW listen_addresses")).scalar() == "127.0.0.1"
            sockets = conn.execute(sa.text("SHOW unix_socket_directories")).scalar()
            assert sockets == str(pg.dir)
    finally:
        engine.dispose()


def test_postgres_takes_another_port_when_its_pick_is_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        picks = iter([taken, postgres.free_port()])
        monkeypatch.setattr(postgres, "free_port", lambda: next(picks))
        with PostgresServer(database="second") as server:
            assert server.port != taken
            assert _listening(server.port) == ["127.0.0.1"]
            folder = server.dir
            port = server.port
    assert folder is not None and not folder.exists()
    assert _listening(port) == []  # stopped


def test_postgres_missing_binaries_say_how_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(postgres, "PG_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"scripts/setup\.sh --test"):
        PostgresServer().start()


# --- Chromium


def _png_data_uri() -> str:
    """A 16 x 16 pure red PNG as a data: URI."""
    buf = io.BytesIO()
    mpimg.imsave(buf, np.tile(np.array([1.0, 0.0, 0.0]), (16, 16, 1)), format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>degen report</title>
<style>body {{ margin: 0; background: #fff; }}
#logo {{ position: absolute; left: 0; top: 0; width: 64px; height: 64px; }}
h1 {{ margin-top: 80px; }}</style></head>
<body><img id="logo" src="{png}" alt="logo"><h1>Degeneration report</h1>
<p id="status">not run</p>
<script>
const logo = document.getElementById("logo");
const show = () => {{ document.getElementById("status").textContent =
  "script ran, logo " + logo.naturalWidth + "px"; }};
logo.complete ? show() : logo.addEventListener("load", show);
</script></body></html>
"""


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "report.html"
    path.write_text(PAGE.format(png=_png_data_uri()), encoding="utf-8")
    return path


def test_dump_dom_runs_scripts(page: Path) -> None:
    dom = browser.dump_dom(page)
    assert "<h1>Degeneration report</h1>" in dom
    assert '<p id="status">script ran, logo 16px</p>' in dom


def test_screenshot_is_a_real_png(page: Path, tmp_path: Path) -> None:
    png = browser.screenshot(page, tmp_path / "shot.png", width=800, height=600)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 2000
    pixels = mpimg.imread(png)
    assert pixels.shape[:2] == (600, 800)
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 2  # not one colour
    r, g, b = pixels[30, 30, :3]  # inside the inline (red) logo
    assert r > 0.9 and g < 0.1 and b < 0.1
    assert tuple(pixels[300, 700, :3]) == (1.0, 1.0, 1.0)  # white background


def test_network_requests_sees_external_fetches(page: Path, tmp_path: Path) -> None:
    assert browser.network_requests(page) == []
    leaky = tmp_path / "leaky.html"
    leaky.write_text(
        '<link rel="stylesheet" href="https://cdn.example.com/style.css">'
        '<img src="http://127.0.0.1:8000/logo.png">'
        "<script>fetch('http://api.example.com/data?x=1').catch(() => {})</script>")
    found = browser.network_requests(leaky)
    assert sorted(found) == ["CONNECT cdn.example.com:443",
                             "GET http://127.0.0.1:8000/logo.png",
                             "GET http://api.example.com/data?x=1"]


def test_browser_errors_are_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such HTML file"):
        browser.dump_dom(tmp_path / "missing.html")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"scripts/setup\.sh --test"):
        browser.find_chromium()
