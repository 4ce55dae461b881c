"""HTTP helpers for tests: the admin API with a token, and Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import ADMIN_TOKEN


async def admin(url: str, method: str, path: str, token: str | None = ADMIN_TOKEN,
                body: Any = None) -> tuple[int, Any]:
    """Call the admin API of the node at `url`; returns (status, JSON body)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, http.request(
            method, f"{url}{path}", headers=headers, json=body) as r:
        return r.status, await r.json()


class Scrape:
    """One scrape of `/metrics`, read by sample name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labels_of(self, name: str) -> list[Mapping[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]


async def scrape(url: str) -> Scrape:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        return Scrape(await r.text())
