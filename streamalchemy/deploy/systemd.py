"""systemd integration: readiness notification for ``Type=notify`` units."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Tell systemd about a state change (``READY=1``, ``STOPPING=1``); False outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True
