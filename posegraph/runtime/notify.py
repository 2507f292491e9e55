"""systemd's service notifications (``sd_notify(3)``), spoken directly on its socket.

Under a unit with ``Type=notify`` systemd sets ``NOTIFY_SOCKET``; with ``WatchdogSec=``
also ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). A run then says:

- ``READY=1`` once every process has set up and the sources are let go (until then
  systemd holds the unit in "activating", under ``TimeoutStartSec=``);
- ``WATCHDOG=1`` every half watchdog interval, from the supervisor's own loop: if that
  loop ever stops turning, systemd kills the run and ``Restart=`` starts it again;
- ``STATUS=...``, a line of figures (``systemctl status`` shows it), every few seconds;
- ``STOPPING=1`` when it starts to drain.

Without ``NOTIFY_SOCKET`` every call does nothing. A socket that cannot be reached is
logged once and then left alone, and a message that does not fit in the listener's queue
(a listener that stopped reading) is dropped, not waited for: notifications never stop a
pipeline.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: seconds between STATUS lines
STATUS_EVERY = 5.0


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]  # the abstract namespace
        elif path.startswith("/"):
            self.address = path
        elif path:
            log.warning("NOTIFY_SOCKET %r: not a socket path; systemd will not hear this run", path)
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if self.address and usec.isdigit() and int(usec) > 0:
            if not pid or pid == str(os.getpid()):
                self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self.dropped = 0  # messages the listener's full queue had no room for
        self._ready = self._stopping = False
        self._next_ping = 0.0
        self._next_status = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # never wait: a listener that stops reading must not stop the supervising loop
            self._sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "the listener on %s reads no notifications (its queue is full): dropping "
                    "them until it does",
                    os.environ.get("NOTIFY_SOCKET", self.address),
                )
        except OSError as exc:
            log.warning(
                "cannot notify systemd on %s: %s; no more notifications from this run",
                os.environ.get("NOTIFY_SOCKET", self.address),
                exc,
            )
            self.close()
            self.address = None

    def tick(self, running: bool, status: Callable[[], str] | None = None) -> None:
        """Called often from the loop that supervises the run: READY once ``running``,
        the watchdog's pings, and now and then the line ``status()`` makes."""
        if self.address is None:
            return
        now = time.monotonic()
        fields = []
        if running and not self._ready:
            self._ready = True
            fields.append("READY=1")
        if self.watchdog_s is not None and now >= self._next_ping:
            fields.append("WATCHDOG=1")
            self._next_ping = now + self.watchdog_s / 2
        if status is not None and self._ready and (now >= self._next_status or "READY=1" in fields):
            fields.append(f"STATUS={status()}")
            self._next_status = now + STATUS_EVERY
        if fields:
            self.send(*fields)

    def stopping(self, status: str = "draining") -> None:
        """STOPPING=1 (once) with a STATUS line."""
        fields = [] if self._stopping else ["STOPPING=1"]
        self._stopping = True
        self.send(*fields, f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
