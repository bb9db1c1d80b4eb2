"""A total deadline per HTTP request for the `openai` client (`deadline_http_client`).

`httpx`'s timeouts (and so the `openai` client's `timeout`) bound each socket operation: a server that sends the
headers and then one byte every few seconds keeps a request alive for as long as it likes. Here every socket read,
write and connect of a request attempt is given at most the time left until the attempt's deadline, and once the
deadline has passed the next one raises `httpcore2.ReadTimeout` (`WriteTimeout`, `ConnectTimeout`) at once. The
connection is then closed by the HTTP layer as after any timeout (no thread is left reading it), and the `openai`
client sees an ordinary `httpx2.TimeoutException`: retried like any timeout, then `openai.APITimeoutError`.

How: `DeadlineClient.send` (one call per attempt; the client's retries call it again) sets the deadline in a
thread-local for the duration of the call, which includes reading the whole body of a non-streamed answer; the
connection pools' network backend is wrapped so that each stream operation reads it. A streamed answer
(`stream=True`) is bounded up to its headers only: its body is read after `send` returns, under the per-read timeout.
"""

from __future__ import annotations

import logging
import threading
import time

import httpcore2
import openai

logger = logging.getLogger(__name__)


class _Deadline(threading.local):
    at: float | None = None  # time.monotonic() at which the current request attempt of this thread is abandoned
    seconds: float | None = None


_DEADLINE = _Deadline()


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` cut to the time left before this thread's deadline; raises `error` once it has passed."""
    at = _DEADLINE.at
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise error(f"the request took longer than its {_DEADLINE.seconds:g} s deadline")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore2.NetworkStream):
    def __init__(self, stream: httpcore2.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        return self._stream.write(buffer, _bounded(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        stream = self._stream.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore2.ConnectTimeout))
        return DeadlineStream(stream)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore2.NetworkBackend):
    def __init__(self, backend: httpcore2.NetworkBackend):
        self._backend = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return DeadlineStream(self._backend.connect_tcp(host, port, _bounded(timeout, httpcore2.ConnectTimeout),
                                                        local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return DeadlineStream(self._backend.connect_unix_socket(path, _bounded(timeout, httpcore2.ConnectTimeout),
                                                                socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineClient(openai.DefaultHttpxClient):
    """The `openai` client's default HTTP client (its timeout, limits and redirects) where each `send` (one request
    attempt) has at most `deadline` seconds in all."""

    def __init__(self, deadline: float, **kwargs):
        if not deadline > 0:
            raise ValueError(f"The request deadline must be > 0 seconds, got {deadline}.")
        super().__init__(**kwargs)
        self.deadline = float(deadline)
        # The plain transport and any proxy transport (from HTTPS_PROXY & co): every connection pool they hold.
        for transport in [self._transport, *self._mounts.values()]:
            if transport is None:  # a NO_PROXY entry: served by self._transport
                continue
            pool = getattr(transport, "_pool", None)
            backend = getattr(pool, "_network_backend", None)
            if backend is None:
                logger.warning(
                    "%s has no network backend to wrap: its requests are bounded per socket read only, not by "
                    "a total %g s deadline.", type(transport).__name__, self.deadline
                )
            elif not isinstance(backend, DeadlineBackend):
                pool._network_backend = DeadlineBackend(backend)

    def __del__(self):  # as the openai client's own default client: its connections go with it
        try:
            if not self.is_closed:
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def send(self, request, **kwargs):
        previous = (_DEADLINE.at, _DEADLINE.seconds)
        at = time.monotonic() + self.deadline
        if previous[0] is None or at < previous[0]:
            _DEADLINE.at, _DEADLINE.seconds = at, self.deadline
        try:
            return super().send(request, **kwargs)
        finally:
            _DEADLINE.at, _DEADLINE.seconds = previous


def deadline_http_client(deadline: float) -> DeadlineClient:
    """An `httpx2.Client` for `openai.OpenAI(http_client=...)` whose request attempts last `deadline` s at most."""
    return DeadlineClient(deadline, timeout=deadline)
