"""RemoteMonitor: post every epoch's logs to an HTTP server with ``requests``, off the training thread."""

from __future__ import annotations

import json
import queue
import threading
import warnings
from typing import Any

import numpy as np
import torch

from torchcb.callbacks.base import Callback
from torchcb.distributed import is_main_process

__all__ = ["RemoteMonitor"]

_STOP = object()


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class RemoteMonitor(Callback):
    """POSTs ``{"epoch": epoch, **logs}`` to ``root + path`` at the end of every epoch.

    The post is Keras' own, made with ``requests`` as Keras makes it: the payload is the
    0-based epoch first, then every log value, numpy and tensor scalars made plain; with
    ``send_as_json`` it is ``requests.post(root + path, json=payload, headers=headers)``
    (``Content-Type: application/json``), otherwise ``requests.post(root + path,
    {field: json.dumps(payload)}, headers=headers)``, a form whose field ``field`` holds the
    JSON text. So the bytes on the wire are those Keras sends, and ``requests`` takes the
    proxy from the environment (``http_proxy``, ``https_proxy``, ``no_proxy``) as usual. As
    in Keras, the server's answer (its status) is not checked: only a post that fails in
    ``requests`` (the server cannot be reached, does not answer within ``timeout``) counts
    as a failure, and it gives Keras 3's warning ``Could not reach RemoteMonitor root server
    at <root>`` (a ``UserWarning``), once when the server starts failing (again only after
    it has answered in between); training goes on.

    Unlike Keras, posting never stalls a training step: a background thread sends from a
    bounded queue, each post with ``requests``' ``timeout`` (which bounds the connection and
    each read); when the queue is full the oldest epoch waiting is dropped. The end of
    ``fit`` waits at most ``flush_timeout`` seconds for the posts still queued; what is not
    sent by then is dropped (a post already in flight finishes in the background within its
    timeout, and the thread ends with it), and a warning counts the failed and dropped posts.

    Args:
        root: the server's root URL.
        path: the path under ``root`` to post to.
        field: the form field holding the JSON, when not ``send_as_json``.
        headers: extra HTTP headers; default ``{}``.
        send_as_json: send the payload as a JSON body.
        timeout: ``requests``' timeout for each post, in seconds.
        flush_timeout: seconds the end of ``fit`` waits for the queued posts.
        queue_size: how many epochs may wait to be sent.

    Example:
        >>> from torchcb.callbacks import RemoteMonitor
        >>> monitor = RemoteMonitor(root="http://localhost:9000", send_as_json=True)
        >>> monitor.headers
        {}
        >>> # trainer.fit(x, y, callbacks=[monitor])  # each epoch end: POST http://localhost:9000/publish/epoch/end/
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
        import requests  # noqa: F401  (with the callback, not by ``import torchcb`` nor during ``fit``)

        self.root = root
        self.path = path
        self.field = field
        self.headers = headers if headers is not None else {}
        self.send_as_json = send_as_json
        self.timeout = timeout
        self.flush_timeout = flush_timeout
        self.queue_size = queue_size
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._abandon = threading.Event()
        self._lock = threading.Lock()
        self._queued = self._sent = self._failed = self._dropped = 0
        self._failing = False  # the server's state as last seen by the sender
        self._warned_outage = False  # whether the current outage was warned about
        self._last_error = ""

    @property
    def url(self) -> str:
        return self.root + self.path

    # ----------------------------------------------------------------- the sender

    def _post(self, payload: dict[str, Any]) -> None:
        """Keras' call, with a timeout: the answer is not checked."""
        import requests

        if self.send_as_json:
            requests.post(self.url, json=payload, headers=self.headers, timeout=self.timeout)
        else:
            requests.post(self.url, {self.field: json.dumps(payload)}, headers=self.headers, timeout=self.timeout)

    def _send(self, payload: dict[str, Any]) -> None:
        try:
            self._post(payload)
        except (
            Exception
        ) as error:  # requests' errors (unreachable, timed out), or anything else: never the thread's end
            with self._lock:
                self._failed += 1
                self._failing = True
                self._last_error = f"{type(error).__name__}: {error}"
            return
        with self._lock:
            self._sent += 1
            self._failing = self._warned_outage = False

    def _run(self, posts: queue.Queue[Any], abandon: threading.Event) -> None:
        while True:
            payload = posts.get()
            if payload is _STOP:
                return
            if abandon.is_set():
                with self._lock:
                    self._dropped += 1
                continue
            self._send(payload)

    def _enqueue(self, item: Any) -> None:
        """Put ``item`` in the queue without waiting: when it is full, the oldest epoch waiting is dropped."""
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    dropped = self._queue.get_nowait()
                except queue.Empty:
                    continue
                if dropped is not _STOP:
                    with self._lock:
                        self._dropped += 1

    def _warn_if_failing(self) -> None:
        with self._lock:
            failing, warned = self._failing, self._warned_outage
            if failing:
                self._warned_outage = True
        if failing and not warned:
            warnings.warn(f"Could not reach RemoteMonitor root server at {self.root}", stacklevel=3)

    # ----------------------------------------------------------------- hooks

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not is_main_process():
            return
        with self._lock:
            self._queued = self._sent = self._failed = self._dropped = 0
            self._failing = self._warned_outage = False
        self._queue = queue.Queue(maxsize=self.queue_size)
        self._abandon = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._queue, self._abandon), name="torchcb-RemoteMonitor", daemon=True
        )
        self._thread.start()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not is_main_process():
            return
        payload = {"epoch": epoch}
        for key, value in (logs or {}).items():
            payload[key] = _plain(value)
        json.dumps(payload)  # an unserialisable value fails here, in the training thread, as in Keras
        if self._thread is None:  # driven by hand without on_train_begin: send in place, as Keras
            self._send(payload)
        else:
            with self._lock:
                self._queued += 1
            self._enqueue(payload)
        self._warn_if_failing()

    def _finish(self) -> None:
        """Let the sender work through the queue for at most ``flush_timeout`` seconds, then stop it.

        What is still queued then is dropped and counted; the post in flight, if any, ends
        within its own timeout, and the thread with it.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._enqueue(_STOP)
        thread.join(self.flush_timeout)
        if thread.is_alive():  # the server is slower than training
            self._abandon.set()
            dropped = 0
            while True:
                try:
                    dropped += self._queue.get_nowait() is not _STOP
                except queue.Empty:
                    break
            with self._lock:
                self._dropped += dropped
            self._queue.put_nowait(_STOP)  # the queue is empty: the sender stops after its post in flight

    def on_train_end(self, logs: dict | None = None) -> None:
        if not is_main_process():
            return
        self._finish()
        self._warn_if_failing()
        with self._lock:
            failed, dropped, queued, error = self._failed, self._dropped, self._queued, self._last_error
            in_flight = queued - failed - dropped - self._sent
        if failed or dropped:
            warnings.warn(
                f"RemoteMonitor: of {queued} epochs, {failed} posts to {self.url} failed"
                + (f" (last: {error})" if failed else "")
                + f" and {dropped} were dropped unsent (the server was slower than training)"
                + (f"; {in_flight} still in flight" if in_flight else "")
                + ".",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_train_error(self, error: BaseException) -> None:
        self._finish()
