"""Typed keys for what the application holds (no module globals)."""

from __future__ import annotations

from aiohttp import web

from app.admission import Gate
from app.config import Settings
from app.service import SignalingService

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", SignalingService)
GATE = web.AppKey("gate", Gate)
