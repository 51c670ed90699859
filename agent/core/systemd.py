"""sd_notify without a dependency: one datagram to $NOTIFY_SOCKET per message.

No-op when not started by systemd (NOTIFY_SOCKET unset), so the same code runs in a terminal.
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s: float | None = (
            int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        )
        self._sock: socket.socket | None = None
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> None:
        if not self._address:
            return
        address = self._address
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        if self._sock is None:
            # Non-blocking: a datagram socket whose reader is slow blocks the sender once its
            # queue (net.unix.max_dgram_qlen, 10 by default) is full — that must never stall
            # the event loop. A dropped STATUS/WATCHDOG is resent on the next tick.
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        try:
            self._sock.sendto(message.encode(), address)
        except OSError:
            # systemd gone, socket closed or queue full: notification is best-effort by design.
            self.dropped += 1

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
