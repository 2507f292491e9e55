"""Sinks to other services: MQTT, Redis Streams and HTTP webhooks.

Each publishes the message of DESIGN section 2 (``v`` = 1) for every frame and event
(``gap``, ``source_down``, ``source_up``, ``eos``). They share one behaviour, held by
:class:`Outbox`:

- ``write`` never blocks the pipeline: it puts the message into a bounded buffer and a
  background thread delivers it;
- while the service is unreachable the buffer keeps up to ``buffer`` messages; beyond
  that the oldest are dropped, counted and logged (the first drop, then every 100);
- the thread retries with exponential backoff (``backoff`` doubling up to
  ``backoff_max``, or longer where the service says when to come back: HTTP's
  ``Retry-After``) and delivers what was kept once the service is back, oldest first;
- an unreachable service at start is not an error (it may come up later); a malformed
  address is a NodeError;
- ``close`` delivers what it can within ``close_timeout`` seconds and logs a summary:
  delivered, dropped, rejected and undelivered messages.

Delivery is at least once: a message whose acknowledgement was lost with the connection
is sent again, so a consumer may see it twice (``stream`` with ``index`` or ``event``
identifies it).
"""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

import msgpack

from nodes.sources import redact
from posegraph.node import NodeError, Sink, register
from posegraph.packet import Frame, to_message

log = logging.getLogger(__name__)

#: losses are logged at the first one and then once every this many messages
LOG_EVERY = 100
#: while closing, a service that is down is retried this often until the timeout
CLOSING_RETRY_S = 0.2
#: the longest wait a service's own "retry after" may ask for; longer asks wait this long
RETRY_AFTER_MAX_S = 600.0

T = TypeVar("T")


class ServiceDown(Exception):
    """The service did not take the batch; its first ``delivered`` messages did get there.

    The rest are kept and sent again after a backoff, or after ``retry_after`` seconds
    where the service asked for that (and it is longer).
    """

    def __init__(self, reason: str, delivered: int = 0, retry_after: float | None = None):
        super().__init__(reason)
        self.delivered = delivered
        self.retry_after = retry_after


class Rejected(Exception):
    """The service refused messages for good (an HTTP 400, a Redis key of another type):
    sending them again cannot help. ``delivered`` of the batch were accepted."""

    def __init__(self, reason: str, delivered: int = 0):
        super().__init__(reason)
        self.delivered = delivered


class Outbox(Generic[T]):
    """A bounded buffer between a sink's ``write`` and a thread that delivers to a service.

    ``deliver(batch)`` sends up to ``max_batch`` messages, oldest first; it returns when
    they got there, raises :class:`Rejected` for messages the service refuses for good,
    and raises anything else (a :class:`ServiceDown`, a client library's connection error)
    when the service cannot be reached; then the batch goes back to the head of the
    buffer. With ``max_delay`` > 0 a batch waits up to that long to fill. The batch in
    flight is held besides the ``buffer`` messages.
    """

    def __init__(
        self,
        owner: str,
        target: str,
        deliver: Callable[[list[T]], None],
        buffer: int,
        max_batch: int = 100,
        max_delay: float = 0.0,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
    ):
        self.owner = owner
        self.target = target
        self.deliver = deliver
        self.buffer = buffer
        self.max_batch = max(1, min(max_batch, buffer))
        self.max_delay = max_delay
        self.backoff = backoff
        self.backoff_max = max(backoff, backoff_max)
        self.delivered = 0
        self.dropped = 0
        self.rejected = 0
        #: set when ``close`` gives up: a ``deliver`` that waits on the service must return
        self.abandoned = threading.Event()
        # (time put, message); the time lets a batch wait at most max_delay to fill
        self._queue: deque[tuple[float, T]] = deque()
        self._inflight: list[tuple[float, T]] = []
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"{owner}:outbox", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- producer side

    def put(self, message: T) -> None:
        """Queue one message; drops the oldest when the buffer is full. Never blocks."""
        with self._cond:
            self._queue.append((time.monotonic(), message))
            self._trim()
            self._cond.notify()

    def close(self, timeout: float) -> None:
        """Deliver what is left within ``timeout`` seconds, then log what became of it all."""
        with self._cond:
            self._closing.set()
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.abandoned.set()
            # a deliver that is blocked in I/O may not notice at once; the process goes on
            # without it and counts its batch as undelivered
            self._thread.join(1.0)
        with self._cond:
            undelivered = len(self._queue) + len(self._inflight)
        lost = self.dropped or self.rejected or undelivered
        (log.warning if lost else log.info)(
            "sink %s: closed: %d messages delivered to %s, %d dropped (buffer: %d), "
            "%d rejected, %d undelivered",
            self.owner,
            self.delivered,
            self.target,
            self.dropped,
            self.buffer,
            self.rejected,
            undelivered,
        )

    # ---------------------------------------------------------------- delivery side

    def down(self, reason: str) -> None:
        """Note that the service cannot be reached; logged once per outage.

        Called by the delivery thread, also from inside a ``deliver`` that goes on waiting
        for a client library that resends by itself.
        """
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "sink %s: cannot deliver to %s (%s); keeping up to %d messages and retrying",
                self.owner,
                self.target,
                reason,
                self.buffer,
            )
        else:
            log.debug("sink %s: %s still unreachable: %s", self.owner, self.target, reason)

    def _up(self, batch: int) -> None:
        """Note that a batch of ``batch`` messages got through; logged after an outage."""
        if self._down_since is not None:
            with self._cond:
                kept = batch + len(self._queue)
            log.warning(
                "sink %s: %s reachable again after %.1f s; delivering %d kept messages",
                self.owner,
                self.target,
                time.monotonic() - self._down_since,
                kept,
            )
            self._down_since = None

    def _trim(self) -> None:
        """Drop the oldest messages beyond the bound (the caller holds the lock)."""
        over = len(self._queue) - self.buffer
        if over <= 0:
            return
        for _ in range(over):
            self._queue.popleft()
        before = self.dropped
        self.dropped += over
        if before == 0 or before // LOG_EVERY != self.dropped // LOG_EVERY:
            log.warning(
                "sink %s: buffer full (%d messages) while %s is unreachable: "
                "%d oldest messages dropped so far",
                self.owner,
                self.buffer,
                self.target,
                self.dropped,
            )

    def _take(self) -> list[T]:
        """The next batch, oldest first; empty when closing and nothing is left."""
        with self._cond:
            while not self.abandoned.is_set():
                if not self._queue:
                    if self._closing.is_set():
                        return []
                    self._cond.wait()
                    continue
                if (
                    self._closing.is_set()
                    or self.max_delay <= 0
                    or len(self._queue) >= self.max_batch
                ):
                    break
                wait = self._queue[0][0] + self.max_delay - time.monotonic()
                if wait <= 0:
                    break
                self._cond.wait(wait)
            else:
                return []
            n = min(self.max_batch, len(self._queue))
            self._inflight = [self._queue.popleft() for _ in range(n)]
            return [message for _, message in self._inflight]

    def _settle(self, delivered: int, requeue: bool) -> None:
        """Account for the batch in flight: the first ``delivered`` got there; the rest
        go back to the head of the buffer, or count as rejected."""
        with self._cond:
            self.delivered += delivered
            rest = self._inflight[delivered:]
            self._inflight = []
            if requeue:
                self._queue.extendleft(reversed(rest))
                self._trim()
            else:
                self.rejected += len(rest)

    def _run(self) -> None:
        delay = self.backoff
        while True:
            batch = self._take()
            if not batch:
                return
            try:
                self.deliver(batch)
            except Rejected as exc:
                before = self.rejected
                self._settle(exc.delivered, requeue=False)
                if before == 0 or before // LOG_EVERY != self.rejected // LOG_EVERY:
                    log.warning(
                        "sink %s: %s refused %d messages (%d so far): %s",
                        self.owner,
                        self.target,
                        len(batch) - exc.delivered,
                        self.rejected,
                        exc,
                    )
                self._up(len(batch))
                continue
            except Exception as exc:  # noqa: BLE001 - any client error means: try again later
                if self.abandoned.is_set():
                    return
                self._settle(getattr(exc, "delivered", 0), requeue=True)
                self.down(str(exc) or type(exc).__name__)
                asked = getattr(exc, "retry_after", None)
                asked = min(asked, RETRY_AFTER_MAX_S) if asked is not None else 0.0
                if self._closing.is_set():
                    if self.abandoned.wait(max(asked, min(delay, CLOSING_RETRY_S))):
                        return
                else:
                    self._closing.wait(max(asked, delay))
                delay = min(delay * 2, self.backoff_max)
                continue
            self._settle(len(batch), requeue=False)
            self._up(len(batch))
            delay = self.backoff


def encode(message: dict[str, Any], format: str) -> bytes:
    """A message as JSON (compact UTF-8) or msgpack bytes."""
    if format == "json":
        return json.dumps(message, separators=(",", ":")).encode()
    return msgpack.packb(message, use_bin_type=True)


def check_template(template: str, what: str) -> None:
    """A ``{stream}`` template must format with a stream name and nothing else."""
    try:
        template.format(stream="cam")
    except (KeyError, IndexError, ValueError) as exc:
        raise NodeError(
            f"{what} {template!r} is not a valid template ({type(exc).__name__}: {exc}); "
            "the only field is {stream}"
        ) from None


class ServiceSink(Sink):
    """A sink that publishes to a network service through an :class:`Outbox`.

    A subclass implements ``open`` (check its address, make its client; no I/O that could
    fail because the service is down), ``message`` (what one frame or event becomes in
    the buffer), ``deliver`` (send a batch) and ``release`` (close the client), and names
    its service in ``target``.
    """

    max_batch: int = 100
    max_delay: float = 0.0

    def __init__(self, buffer: int, backoff: float, backoff_max: float, close_timeout: float):
        if buffer < 1:
            raise NodeError(f"buffer must be at least 1 message, got {buffer}")
        if backoff <= 0 or backoff_max <= 0 or close_timeout < 0:
            raise NodeError("backoff and backoff_max must be positive, close_timeout >= 0")
        self.buffer = buffer
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.close_timeout = close_timeout
        self.target = ""

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.open()
        self.outbox: Outbox = Outbox(
            ctx.name,
            self.target,
            self.deliver,
            buffer=self.buffer,
            max_batch=self.max_batch,
            max_delay=self.max_delay,
            backoff=self.backoff,
            backoff_max=self.backoff_max,
        )

    def write(self, frame: Frame) -> None:
        self.outbox.put(self.message(frame, to_message(frame, time.time())))

    def close(self) -> None:
        if hasattr(self, "outbox"):
            self.outbox.close(self.close_timeout)
        self.release()

    def open(self) -> None:
        raise NotImplementedError

    def message(self, frame: Frame, message: dict[str, Any]) -> Any:
        raise NotImplementedError

    def deliver(self, batch: list) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Close the client; the default has nothing to close."""


# ------------------------------------------------------------------------- MQTT


@register("sink.mqtt")
class MqttSink(ServiceSink):
    """Publishes each message to an MQTT broker, one topic per stream (paho-mqtt).

    ``topic`` is a template with ``{stream}``. With QoS 1 a message leaves the buffer
    when the broker acknowledges it; messages in flight when the connection drops are
    sent again by paho after it reconnects (its loop thread reconnects on its own, with
    the same backoff). QoS 0 is at most once: what was written to a connection that had
    just died is lost.

    ``tls: true`` encrypts the connection (port 8883 unless ``port`` is given) and checks
    the broker's certificate against the system's certificate authorities, or against
    ``ca_certs`` (a PEM file); ``certfile`` and ``keyfile`` give a client certificate for
    brokers that ask for one; ``tls_insecure: true`` skips the check that the
    certificate names ``host`` (for test set-ups only).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        topic: str = "posegraph/{stream}",
        qos: Literal[0, 1] = 1,
        client_id: str | None = None,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_certs: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        tls_insecure: bool = False,
        format: Literal["json", "msgpack"] = "json",
        buffer: int = 10000,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        close_timeout: float = 5.0,
    ):
        super().__init__(buffer, backoff, backoff_max, close_timeout)
        self.host = host
        self.port = port if port is not None else (8883 if tls else 1883)
        self.tls = tls
        self.tls_files = {"ca_certs": ca_certs, "certfile": certfile, "keyfile": keyfile}
        self.tls_insecure = tls_insecure
        self.topic = topic
        self.qos = qos
        self.client_id = client_id
        self.keepalive = keepalive
        self.username = username
        self.password = password
        self.format = format

    def open(self) -> None:
        ipv6 = self.host.count(":") >= 2
        if not self.host or any(c in self.host for c in "/ \t") or (":" in self.host and not ipv6):
            raise NodeError(
                f"host {self.host!r} is not a host name or IP address (give the port apart)"
            )
        if not 0 < self.port < 65536:
            raise NodeError(f"port {self.port} is out of range 1..65535")
        check_template(self.topic, "topic")
        if "+" in self.topic or "#" in self.topic:
            raise NodeError(
                f"topic {self.topic!r} holds a wildcard (+ or #); publish topics cannot"
            )
        if self.keepalive < 1:
            raise NodeError(f"keepalive must be at least 1 s, got {self.keepalive}")
        given = [name for name, path in self.tls_files.items() if path is not None]
        if given and not self.tls:
            raise NodeError(f"{', '.join(given)} given without tls: true")
        for name in given:
            if not os.path.isfile(self.tls_files[name]):
                raise NodeError(f"{name} {self.tls_files[name]!r}: no such file")
        if (self.tls_files["keyfile"] is None) != (self.tls_files["certfile"] is None):
            raise NodeError("a client certificate needs both certfile and keyfile")
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.target = f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
        client_id = self.client_id or f"posegraph-{self.ctx.pipeline}-{self.ctx.name}"
        if self.ctx.replicas > 1:
            client_id += f"-{self.ctx.replica}"  # a broker lets one client per id in
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
        )
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        if self.tls:
            try:
                self.client.tls_set(**self.tls_files)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise NodeError(f"TLS files cannot be used: {exc}") from None
            self.client.tls_insecure_set(self.tls_insecure)
        self.client.reconnect_delay_set(self.backoff, self.backoff_max)
        self._acks = threading.Condition()
        self._last_error = "not connected yet"
        self._socket_error = ""  # paho logs why a socket failed, and reports no more
        self.client.on_log = self._on_log
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        # connect_async + loop_start: the first connection is tried in paho's thread,
        # which retries for ever, so a broker that is not up yet is no error
        self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()

    def _on_log(self, client, userdata, level, buf) -> None:
        if level == self._mqtt.MQTT_LOG_ERR:
            self._socket_error = buf

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._socket_error = ""
        if reason_code.is_failure:
            self._last_error = f"connection refused: {reason_code}"

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this inside its handler of the connection's error
        error = sys.exc_info()[1]
        self._last_error = f"no connection: {error}" if error is not None else "no connection"

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        why = f" ({self._socket_error})" if self._socket_error else ""
        self._last_error = f"disconnected: {reason_code}{why}"

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acks:
            self._acks.notify_all()

    def message(self, frame: Frame, message: dict[str, Any]) -> tuple[str, bytes]:
        return self.topic.format(stream=frame.stream), encode(message, self.format)

    def deliver(self, batch: list[tuple[str, bytes]]) -> None:
        if not self.client.is_connected():
            raise ServiceDown(self._last_error)
        infos = []
        for n, (topic, payload) in enumerate(batch):
            info = self.client.publish(topic, payload, qos=self.qos)
            if self.qos == 0 and info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                raise ServiceDown(self._last_error, delivered=n)
            infos.append(info)
        if self.qos == 0:
            return
        # QoS 1: paho holds these and sends them again after a reconnect; wait for the
        # acknowledgements, however long the broker is away, unless closing gives up
        with self._acks:
            while not all(info.is_published() for info in infos):
                if self.outbox.abandoned.is_set():
                    acked = next(n for n, info in enumerate(infos) if not info.is_published())
                    raise ServiceDown("closing", delivered=acked)
                if not self.client.is_connected():
                    self.outbox.down(self._last_error)
                self._acks.wait(0.5)

    def release(self) -> None:
        if hasattr(self, "client"):
            self.client.disconnect()
            self.client.loop_stop()


# ------------------------------------------------------------------------ Redis


@register("sink.redis")
class RedisSink(ServiceSink):
    """Appends each message to a Redis stream (XADD), one stream key per posegraph stream.

    ``key`` is a template with ``{stream}``. Each entry has the fields ``data`` (the
    message, JSON or msgpack), ``stream``, and ``index`` for a frame or ``event`` for an
    event, so a consumer can filter without decoding ``data``. ``maxlen`` trims each key
    to about that many entries (``MAXLEN ~``: Redis trims whole nodes, cheaply); None
    keeps everything. A batch goes in one pipelined round trip.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        key: str = "posegraph:{stream}",
        maxlen: int | None = 100000,
        format: Literal["json", "msgpack"] = "json",
        timeout: float = 5.0,
        buffer: int = 10000,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        close_timeout: float = 5.0,
    ):
        super().__init__(buffer, backoff, backoff_max, close_timeout)
        self.url = url
        self.key = key
        self.maxlen = maxlen
        self.format = format
        self.timeout = timeout

    def open(self) -> None:
        parts = urlsplit(self.url)
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        if (
            parts.scheme not in ("redis", "rediss", "unix")
            or not port_ok
            or (parts.scheme != "unix" and not parts.hostname)
        ):
            raise NodeError(
                f"url {redact(self.url)!r} is not a Redis URL; write redis://HOST:PORT/DB, "
                "rediss://... for TLS or unix:///path/to/redis.sock"
            )
        check_template(self.key, "key")
        if self.maxlen is not None and self.maxlen < 1:
            raise NodeError(f"maxlen must be at least 1 (or null to keep all), got {self.maxlen}")
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # the address without credentials, for the log
        self.target = f"{parts.scheme}://{parts.netloc.split('@')[-1]}{parts.path}"
        try:
            # the outbox retries with its own backoff; the client must fail fast
            self.client = redis.Redis.from_url(
                self.url,
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise NodeError(f"url {redact(self.url)!r}: {exc}") from None
        self._response_error = redis.ResponseError

    def message(self, frame: Frame, message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        fields: dict[str, Any] = {"data": encode(message, self.format), "stream": frame.stream}
        if frame.event is None:
            fields["index"] = frame.index
        else:
            fields["event"] = frame.event
        return self.key.format(stream=frame.stream), fields

    def deliver(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, fields in batch:
            pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)
        results = pipe.execute(raise_on_error=False)
        errors = [r for r in results if isinstance(r, Exception)]
        if not errors:
            return
        if not all(isinstance(e, self._response_error) for e in errors):
            raise errors[0]
        raise Rejected(str(errors[0]), delivered=len(batch) - len(errors))

    def release(self) -> None:
        if hasattr(self, "client"):
            self.client.close()


# ---------------------------------------------------------------------- webhook


@register("sink.webhook")
class WebhookSink(ServiceSink):
    """POSTs messages to an HTTP endpoint as a JSON array, in batches.

    A batch holds up to ``max_batch`` messages and waits at most ``max_delay`` seconds
    to fill. Connection errors, timeouts, 408, 429 and 5xx answers are retried with
    backoff, and no sooner than the answer's ``Retry-After`` (seconds or an HTTP date;
    at most 600 s) where it has one; any other 4xx answer means the endpoint refuses the
    batch, which is then counted as rejected and not sent again. ``headers`` are added to
    each request (an ``Authorization`` header, for instance).
    """

    def __init__(
        self,
        url: str,
        headers: dict | None = None,
        max_batch: int = 50,
        max_delay: float = 0.5,
        timeout: float = 5.0,
        buffer: int = 10000,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        close_timeout: float = 5.0,
    ):
        super().__init__(buffer, backoff, backoff_max, close_timeout)
        if max_batch < 1 or max_delay < 0 or timeout <= 0:
            raise NodeError("max_batch must be at least 1, max_delay >= 0 and timeout positive")
        self.url = url
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.timeout = timeout

    def open(self) -> None:
        parts = urlsplit(self.url)
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise NodeError(
                f"url {redact(self.url)!r} is not an HTTP URL; write http://HOST:PORT/PATH or "
                "https://..."
            )
        import urllib.request

        self._urllib = urllib.request
        self.target = f"{parts.scheme}://{parts.netloc.split('@')[-1]}{parts.path}"

    def message(self, frame: Frame, message: dict[str, Any]) -> bytes:
        return encode(message, "json")

    def deliver(self, batch: list[bytes]) -> None:
        import urllib.error

        request = self._urllib.Request(
            self.url,
            data=b"[" + b",".join(batch) + b"]",
            headers={"Content-Type": "application/json", **self.headers},
            method="POST",
        )
        try:
            with self._urllib.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (408, 429) or exc.code >= 500:
                wait = retry_after(exc.headers.get("Retry-After"))
                reason = f"HTTP {exc.code} {exc.reason}"
                if wait is not None:
                    reason += f", retry after {wait:.0f} s"
                raise ServiceDown(reason, retry_after=wait) from None
            raise Rejected(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise ServiceDown(str(reason)) from None


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value: delay seconds or an HTTP date
    (RFC 9110 10.2.3); None when absent or unreadable, 0 for a date already past."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is in GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
