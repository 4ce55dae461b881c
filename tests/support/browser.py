"""Headless Chromium for the browser tests: Debian's `chromium`, never a downloaded build."""

from __future__ import annotations

import shutil

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # The network is closed: without these Chromium's own background requests are refused.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # A fake camera (test pattern) and microphone (beeps), granted without a prompt.
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    # Remote videos play without a click, as they would after a user's first gesture.
    "--autoplay-policy=no-user-gesture-required",
    # Host candidates as plain addresses, not mDNS names: resolving those would multicast.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # Loopback candidates too, so a machine with no other interface can still connect.
    "--allow-loopback-in-peer-connection",
]


def chromium_binary() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        raise RuntimeError("chromium not found: apt-get install chromium (./scripts/test does)")
    return exe
