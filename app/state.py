"""Typed keys for what the application holds (no module globals)."""

from __future__ import annotations

from aiohttp import web

from app.admission import Gate
from app.config import Settings
from app.connection import Sockets
from app.metrics import NodeMetrics
from app.service import SignalingService

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", SignalingService)
METRICS = web.AppKey("metrics", NodeMetrics)
GATE = web.AppKey("gate", Gate)
SOCKETS = web.AppKey("sockets", Sockets)
