"""Typed keys for what the application holds (no module globals)."""

from __future__ import annotations

from aiohttp import web

from app.config.settings import Settings
from app.core.service import SignalingService
from app.edge.admission import Gate
from app.edge.connection import Sockets
from app.obs.metrics import NodeMetrics

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", SignalingService)
METRICS = web.AppKey("metrics", NodeMetrics)
GATE = web.AppKey("gate", Gate)
SOCKETS = web.AppKey("sockets", Sockets)
