"""The demo page as HTTP: what a node serves at `/` and under `/static/`, and nothing else."""

from __future__ import annotations

import fnmatch
import tomllib

import aiohttp

from app.config.settings import Settings
from app.edge.page import STATIC_DIR
from app.node import create_app
from tests.conftest import StartServer
from tests.support.procs import ROOT


async def test_the_page_and_its_modules_are_served_with_their_headers(
    start_server: StartServer,
) -> None:
    server = await start_server(create_app(Settings(node_id="n7")))
    async with aiohttp.ClientSession(server.make_url("")) as http:
        async with http.get("/") as page:
            assert page.status == 200 and page.content_type == "text/html"
            assert page.headers["Server-Timing"] == 'node;desc="n7"'
            assert page.headers["X-Node-Id"] == "n7"
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
            assert page.headers["Cache-Control"] == "no-cache"
            html = await page.text()
        assert '<script type="module" src="/static/app.js">' in html
        for name, kind in [("app.js", "text/javascript"), ("mesh.js", "text/javascript"),
                           ("signaling.js", "text/javascript"), ("style.css", "text/css")]:
            async with http.get(f"/static/{name}") as r:
                assert (r.status, r.content_type) == (200, kind), name
                assert await r.read() == (STATIC_DIR / name).read_bytes()


async def test_nothing_outside_the_static_files_is_served(start_server: StartServer) -> None:
    server = await start_server(create_app(Settings(node_id="n7")))
    async with aiohttp.ClientSession(server.make_url("")) as http:
        for path in ["/static/nope.js", "/static/..%2Fpage.py", "/static/%2e%2e/config.py",
                     "/static/", "/index.html", "/app/page.py"]:
            async with http.get(path) as r:
                assert r.status == 404, path


def test_the_package_carries_the_static_files() -> None:
    """A wheel (the image installs one) has only what package-data names."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["app"]
    files = [p.relative_to(STATIC_DIR.parent).as_posix() for p in STATIC_DIR.iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)
