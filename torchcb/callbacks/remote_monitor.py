"""RemoteMonitor: post every epoch's logs to an HTTP server, without ever stalling training."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import queue
import socket
import threading
import time
import urllib.parse
import urllib.request
import warnings
from typing import Any

import numpy as np
import torch

from torchcb.callbacks.base import Callback
from torchcb.distributed import is_main_process

__all__ = ["RemoteMonitor"]

_STOP = object()
_FORM = "application/x-www-form-urlencoded"


class _DeadlineSocket:
    """A connected socket whose every read and write must end before one deadline for the whole post.

    A socket timeout bounds each read alone, so a server that answers a byte at a time could
    hold a post, and its thread, for ever; here the time left shrinks with each read.
    ``abort()`` (from another thread) ends a read that is waiting.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def _time_left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the post took longer than its timeout")
        return left

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._sock.settimeout(self._time_left())
        return self._sock.recv_into(buffer, nbytes, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._sock.settimeout(self._time_left())
        self._sock.sendall(data, flags)

    def makefile(self, mode: str = "rb", buffering: int | None = None, **kwargs: Any) -> io.BufferedReader:
        # as socket.makefile does: the socket stays open until the file is closed too, since
        # http.client closes the connection before it reads an answer that ends with it
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]  # reads go through recv_into

    def _decref_socketios(self) -> None:
        self._sock._decref_socketios()  # type: ignore[attr-defined]

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _create_connection(address: tuple[str, int], *args: Any) -> socket.socket:
    """``socket.create_connection`` with an ASCII host handed over as bytes: the same lookup,
    without loading the idna codec (three modules, ~1 ms in a process) for a host that needs none."""
    host, port = address
    return socket.create_connection((host.encode() if host.isascii() else host, port), *args)


class _DeadlineConnection:
    """Mixed into http.client's connections: the connected socket gets the post's deadline."""

    deadline: float
    on_connect: Any

    def connect(self) -> None:
        self._create_connection = _create_connection  # http.client's hook for opening the socket
        super().connect()  # type: ignore[misc]  # the TCP (and TLS) handshake, bounded by the timeout
        self.sock = _DeadlineSocket(self.sock, self.deadline)  # type: ignore[has-type]
        self.on_connect(self.sock)


class _HTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


def _connection(url: str, timeout: float) -> tuple[_HTTPConnection | _HTTPSConnection, str, dict[str, str]]:
    """A connection for one POST to ``url``, what to ask for on it, and the proxy's headers.

    The proxy is the one urllib (and ``requests``) would take: ``http_proxy``/``https_proxy``
    unless ``no_proxy`` names the host. A plain-HTTP post asks the proxy for the whole URL; an
    HTTPS post tunnels through it. Credentials in the proxy's URL become its Basic auth.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http or https URL: {url!r}")
    kind = _HTTPSConnection if parts.scheme == "https" else _HTTPConnection
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
        return kind(parts.hostname, parts.port, timeout=timeout), target, {}
    proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    proxy_headers = {}
    if proxy_parts.username is not None:
        user, password = (urllib.parse.unquote(part or "") for part in (proxy_parts.username, proxy_parts.password))
        proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    connection = kind(proxy_parts.hostname or "", proxy_parts.port, timeout=timeout)
    if kind is _HTTPConnection:
        return connection, url, proxy_headers
    connection.set_tunnel(parts.hostname, parts.port, proxy_headers)
    return connection, target, {}


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class RemoteMonitor(Callback):
    """POSTs ``{"epoch": epoch, **logs}`` to ``root + path`` at the end of every epoch.

    The payload is Keras 2's exactly: the 0-based epoch first, then every log value, numpy
    and tensor scalars made plain. With ``send_as_json`` the body is that JSON object
    (``Content-Type: application/json``); otherwise it is a form with the field ``field``
    holding the JSON text. Each post is one connection of the standard library's
    ``http.client``, through the proxy the ``http_proxy``/``https_proxy``/``no_proxy``
    environment variables name, as ``requests`` and ``urllib`` choose it; as in Keras, the
    server's answer (its status, a redirect) is not checked, so only a server that cannot be
    reached (or does not answer within ``timeout``) counts as a failure.

    Posting never stalls a training step: a background thread sends from a bounded queue,
    and each post must end within ``timeout`` seconds in all (connecting, sending and
    reading the answer together, so a server that trickles its answer cannot hold it
    longer). If the queue is full the oldest epoch waiting is dropped. A dead or slow server
    warns once when it starts failing (again only after it has answered in between) and
    once at the end of training with the count of failed and dropped posts; training goes
    on. ``on_train_end`` waits at most ``flush_timeout`` seconds for the posts still queued,
    then cuts off the one in flight and drops the rest: no thread or socket of this callback
    outlives ``fit``.

    Args:
        root: the server's root URL.
        path: the path under ``root`` to post to.
        field: the form field holding the JSON, when not ``send_as_json``.
        headers: extra HTTP headers.
        send_as_json: send the payload as a JSON body.
        timeout: seconds each post may take, all of it.
        flush_timeout: seconds ``on_train_end`` waits for queued posts.
        queue_size: how many epochs may wait to be sent.

    Example:
        >>> from torchcb.callbacks import RemoteMonitor
        >>> monitor = RemoteMonitor(root="http://localhost:9000", send_as_json=True)
        >>> # trainer.fit(x, y, callbacks=[monitor])
    """

    def __init__(
        self,
        root: str = "http://localhost:9000",
        path: str = "/publish/epoch/end/",
        field: str = "data",
        headers: dict[str, str] | None = None,
        send_as_json: bool = False,
        *,
        timeout: float = 10.0,
        flush_timeout: float = 5.0,
        queue_size: int = 64,
    ) -> None:
        super().__init__()
        if timeout <= 0 or flush_timeout < 0 or queue_size <= 0:
            raise ValueError("timeout and queue_size must be positive and flush_timeout >= 0.")
        self.root = root
        self.path = path
        self.field = field
        self.headers = headers
        self.send_as_json = send_as_json
        self.timeout = timeout
        self.flush_timeout = flush_timeout
        self.queue_size = queue_size
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sent = 0
        self._failed = 0
        self._dropped = 0
        self._abandon = threading.Event()
        self._failing = False  # the server's state as last seen by the sender
        self._warned_outage = False  # whether the current outage was warned about
        self._last_error = ""
        self._in_flight: _DeadlineSocket | None = None  # the socket of the post being sent

    @property
    def url(self) -> str:
        return self.root + self.path

    # ----------------------------------------------------------------- the sender thread

    def _request(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """The POST Keras makes: a JSON body, or a form whose ``field`` holds the JSON text."""
        if self.send_as_json:
            body, content_type = json.dumps(payload), "application/json"
        else:
            body, content_type = urllib.parse.urlencode({self.field: json.dumps(payload)}), _FORM
        # names title-cased, as urllib sends them, so a Content-Type of the user's replaces ours
        headers = {"Content-Type": content_type, "Connection": "close"}
        headers.update((name.title(), value) for name, value in (self.headers or {}).items())
        return body.encode(), headers

    def _connected(self, sock: _DeadlineSocket) -> None:
        with self._lock:
            self._in_flight = sock

    def _send(self, payload: dict[str, Any]) -> None:
        try:
            body, headers = self._request(payload)
            connection, target, proxy_headers = _connection(self.url, self.timeout)
            connection.deadline = time.monotonic() + self.timeout  # one deadline for the whole post
            connection.on_connect = self._connected
            try:
                connection.request("POST", target, body, {**headers, **proxy_headers})
                connection.getresponse().read()  # as in Keras, the answer is not checked
            finally:
                connection.close()
        except (OSError, http.client.HTTPException, ValueError) as error:  # unreachable, timed out, bad URL
            with self._lock:
                self._in_flight = None
                self._failed += 1
                self._failing = True
                self._last_error = f"{type(error).__name__}: {error}"
            return
        with self._lock:
            self._in_flight = None
            self._sent += 1
            self._failing = False
            self._warned_outage = False

    def _run(self, abandon: threading.Event) -> None:
        while True:
            payload = self._queue.get()
            if payload is _STOP:
                return
            if abandon.is_set():
                with self._lock:
                    self._dropped += 1
                return
            self._send(payload)

    def _warn_if_failing(self) -> None:
        with self._lock:
            failing, warned = self._failing, self._warned_outage
            if failing:
                self._warned_outage = True
        if failing and not warned:
            warnings.warn(
                f"Warning: could not reach RemoteMonitor root server at {self.root} ({self._last_error}); "
                "training goes on.",
                RuntimeWarning,
                stacklevel=3,
            )

    # ----------------------------------------------------------------- hooks

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not is_main_process():
            return
        with self._lock:
            self._sent = self._failed = self._dropped = 0
            self._failing = self._warned_outage = False
        self._queue = queue.Queue(maxsize=self.queue_size)
        self._abandon = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._abandon,), name="torchcb-RemoteMonitor", daemon=True
        )
        self._thread.start()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not is_main_process():
            return
        payload = {"epoch": epoch}
        for key, value in (logs or {}).items():
            payload[key] = _plain(value)
        json.dumps(payload)  # an unserialisable value fails here, in the training thread, as in Keras
        if self._thread is None:  # driven by hand without on_train_begin: send in place
            self._send(payload)
        else:
            while True:
                try:
                    self._queue.put_nowait(payload)
                    break
                except queue.Full:
                    try:  # drop the oldest epoch waiting
                        self._queue.get_nowait()
                        with self._lock:
                            self._dropped += 1
                    except queue.Empty:
                        pass
        self._warn_if_failing()

    def _finish(self) -> None:
        """Let the sender work through the queue for at most ``flush_timeout`` seconds, then stop it.

        A post still in flight then is cut off and what is left in the queue is dropped: no
        thread or socket of this callback outlives ``fit``, and every epoch is counted.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return
        deadline = time.monotonic() + self.flush_timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=max(self.flush_timeout, 1e-3))
        thread.join(max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():  # the server is too slow
            self._abandon.set()
            with self._lock:
                in_flight = self._in_flight
            if in_flight is not None:
                in_flight.abort()
            thread.join(self.timeout + 1.0)  # a post ends by its deadline in any case
        dropped = 0
        while True:
            try:
                dropped += self._queue.get_nowait() is not _STOP
            except queue.Empty:
                break
        with self._lock:
            self._dropped += dropped

    def on_train_end(self, logs: dict | None = None) -> None:
        if not is_main_process():
            return
        self._finish()
        self._warn_if_failing()
        with self._lock:
            failed, dropped, total = self._failed, self._dropped, self._failed + self._sent + self._dropped
        if failed or dropped:
            warnings.warn(
                f"RemoteMonitor: of {total} epochs, {failed} posts to {self.url} failed and {dropped} were dropped "
                f"unsent (the server was slower than training).",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_train_error(self, error: BaseException) -> None:
        self._finish()
