"""BACnet/IP endpoint addresses: ``host[/prefix][:port]``."""

from __future__ import annotations

import ipaddress

BACNET_PORT = 47808


def parse_host_port(text: str, default_port: int = BACNET_PORT) -> tuple[str, int | None, int]:
    """``host[/prefix][:port]`` → (host, prefix or None, port). Raises ValueError."""
    s = text.strip()
    if not s:
        raise ValueError("address is empty")
    host, sep, port_text = s.rpartition(":")
    if not sep:
        host, port_text = s, ""
    host, slash, prefix_text = host.partition("/")
    if not host:
        raise ValueError(f"{text!r}: expected host[:port], e.g. 192.168.1.20:47808")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port must be a number 0..65535, got {port_text!r}")
        port = int(port_text)
    prefix: int | None = None
    if slash:
        if not prefix_text.isdigit() or not 0 <= int(prefix_text) <= 32:
            raise ValueError(f"{text!r}: network prefix must be /0../32, got /{prefix_text}")
        prefix = int(prefix_text)
    return host, prefix, port


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
