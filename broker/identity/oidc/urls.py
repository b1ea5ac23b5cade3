"""Which endpoint URLs are acceptable: HTTPS, or plain HTTP to a loopback address only."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
