import base64
import json
import os
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests.conftest import make_data, make_trainer
from torchcb.callbacks import RemoteMonitor


class Server:
    """A real HTTP server on 127.0.0.1 that records every POST."""

    def __init__(self, delay=0.0, status=200):
        self.requests = []
        self.release = threading.Event()
        received = self.requests
        release = self.release

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if delay:
                    release.wait(delay)  # a slow server; the test releases it when it is done
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_json_mode_posts_the_keras_payload_once_per_epoch(server, recwarn):
    history = make_trainer().fit(
        *make_data(8),
        epochs=3,
        verbose=0,
        validation_split=0.25,
        callbacks=[RemoteMonitor(root=server.root, send_as_json=True)],
    )
    assert len(server.requests) == 3
    for epoch, request in enumerate(server.requests):
        assert request["path"] == "/publish/epoch/end/"
        assert request["headers"]["Content-Type"] == "application/json"
        payload = json.loads(request["body"])
        assert list(payload)[0] == "epoch" and payload["epoch"] == epoch
        assert payload["loss"] == history.history["loss"][epoch]
        assert payload["val_accuracy"] == history.history["val_accuracy"][epoch]
    assert [str(w.message) for w in recwarn if "RemoteMonitor" in str(w.message)] == []  # every post got its answer


def test_form_mode_with_custom_field_path_and_headers(server):
    make_trainer().fit(
        *make_data(8),
        epochs=1,
        verbose=0,
        callbacks=[RemoteMonitor(root=server.root, path="/runs/7", field="payload", headers={"X-Token": "secret"})],
    )
    (request,) = server.requests
    assert request["path"] == "/runs/7"
    assert request["headers"]["X-Token"] == "secret"
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    form = urllib.parse.parse_qs(request["body"].decode())
    assert sorted(json.loads(form["payload"][0])) == ["accuracy", "epoch", "loss"]


def test_a_users_content_type_header_replaces_the_default(server):
    monitor = RemoteMonitor(root=server.root, send_as_json=True, headers={"content-type": "text/plain"})
    monitor.on_epoch_end(0, {"loss": 0.5})
    (request,) = server.requests
    assert [v for k, v in request["headers"].items() if k.lower() == "content-type"] == ["text/plain"]
    assert json.loads(request["body"]) == {"epoch": 0, "loss": 0.5}


def test_an_error_status_is_an_answer_not_a_failure(recwarn):
    failing = Server(status=500)  # Keras ignores the server's answer; only an unreachable server warns
    try:
        history = make_trainer().fit(
            *make_data(8), epochs=2, verbose=0, callbacks=[RemoteMonitor(root=failing.root, send_as_json=True)]
        )
    finally:
        failing.close()
    assert len(failing.requests) == 2
    assert [json.loads(r["body"])["loss"] for r in failing.requests] == history.history["loss"]
    assert not [w for w in recwarn if "RemoteMonitor" in str(w.message)]


def test_numpy_values_are_made_plain_driven_by_hand(server):
    monitor = RemoteMonitor(root=server.root, send_as_json=True)
    monitor.on_epoch_end(4, {"loss": np.float32(1.0), "index": np.arange(1), "count": np.int64(3)})
    payload = json.loads(server.requests[0]["body"])
    assert payload == {"epoch": 4, "loss": 1.0, "index": 0, "count": 3}


def test_an_unserialisable_value_fails_in_the_training_thread(server):
    monitor = RemoteMonitor(root=server.root)
    with pytest.raises(TypeError, match="not JSON serializable"):
        monitor.on_epoch_end(0, {"loss": object()})


def _refused_root():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def test_a_refused_connection_warns_once_not_per_epoch_and_training_goes_on(recwarn):
    root = _refused_root()
    history = make_trainer().fit(*make_data(8), epochs=10, verbose=0, callbacks=[RemoteMonitor(root=root, timeout=2)])
    assert len(history.epoch) == 10
    unreachable = [w for w in recwarn if str(w.message) == f"Could not reach RemoteMonitor root server at {root}"]
    assert len(unreachable) == 1 and unreachable[0].category is UserWarning  # Keras 3's warning, not a print
    messages = [str(w.message) for w in recwarn]
    assert [m for m in messages if m.startswith("RemoteMonitor: of 10 epochs, 10 posts")] != []


def test_a_slow_server_does_not_slow_training_beyond_the_bounded_wait(recwarn):
    slow = Server(delay=5.0)
    try:
        trainer = make_trainer()
        x, y = make_data(8)
        start = time.monotonic()
        trainer.fit(x, y, epochs=10, verbose=0)
        plain = time.monotonic() - start
        start = time.monotonic()
        history = trainer.fit(x, y, epochs=10, verbose=0, callbacks=[RemoteMonitor(root=slow.root, flush_timeout=1.0)])
        with_monitor = time.monotonic() - start
        assert len(history.epoch) == 10
        assert with_monitor < plain + 1.0 + 1.0  # the 1 s flush wait, and a second of slack
        assert 1 <= len(slow.requests) <= 2  # one post in flight when training ended; the rest dropped
        messages = [str(w.message) for w in recwarn]
        assert any("were dropped unsent (the server was slower than training)" in m for m in messages)
    finally:
        slow.close()


class TrickleServer:
    """A real server on 127.0.0.1 that reads each request, then answers one byte every ``pause`` seconds."""

    def __init__(self, pause=0.05):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.root = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open_connections = 0
        self.accepted = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pause = pause
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with self.lock:
                self.open_connections += 1
                self.accepted += 1
            thread = threading.Thread(target=self._trickle, args=(connection,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _trickle(self, connection):
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
        try:
            connection.recv(65536)
            for byte in answer:
                if self.stop.is_set():
                    break
                connection.sendall(bytes([byte]))
                time.sleep(self.pause)
        except OSError:  # the client closed the connection
            pass
        finally:
            connection.close()
            with self.lock:
                self.open_connections -= 1

    def close(self):
        self.stop.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=10)


def test_a_server_that_trickles_its_answer_does_not_hold_fit_and_gets_no_post_after_it(recwarn):
    server = TrickleServer()
    try:
        monitor = RemoteMonitor(root=server.root, timeout=0.6, flush_timeout=0.3)
        history = make_trainer().fit(*make_data(8), epochs=4, verbose=0, callbacks=[monitor])
        assert len(history.epoch) == 4
        with server.lock:
            accepted_during_fit = server.accepted
        assert accepted_during_fit >= 1
        summary = [str(w.message) for w in recwarn if str(w.message).startswith("RemoteMonitor: of 4 epochs")]
        assert len(summary) == 1
        failed, dropped = (int(n) for n in re.findall(r"(\d+) posts .* failed.* and (\d+) were dropped", summary[0])[0])
        in_flight = re.findall(r"(\d+) still in flight", summary[0])
        assert failed + dropped + int(in_flight[0] if in_flight else 0) == 4 and dropped >= 1
    finally:
        server.close()  # the trickle stops: the post in flight ends, and its thread with it
    for thread in [t for t in threading.enumerate() if t.name == "torchcb-RemoteMonitor"]:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert server.accepted == accepted_during_fit  # nothing was posted after fit


@pytest.fixture
def no_proxy_settings(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_posts_go_through_the_proxy_the_environment_names_with_its_credentials(server, no_proxy_settings):
    # the recording server plays a forward proxy: it is asked for the whole URL, with Basic auth
    no_proxy_settings.setenv("http_proxy", server.root.replace("http://", "http://ann:p%40ss@"))
    monitor = RemoteMonitor(root="http://monitor.invalid:9000", send_as_json=True)
    monitor.on_epoch_end(2, {"loss": 0.25})
    (request,) = server.requests
    assert request["path"] == "http://monitor.invalid:9000/publish/epoch/end/"
    assert request["headers"]["Proxy-Authorization"] == "Basic " + base64.b64encode(b"ann:p@ss").decode()
    assert request["headers"]["Host"] == "monitor.invalid:9000"
    assert json.loads(request["body"]) == {"epoch": 2, "loss": 0.25}


def test_a_host_named_in_no_proxy_is_posted_to_directly(server, no_proxy_settings):
    no_proxy_settings.setenv("http_proxy", _refused_root())
    no_proxy_settings.setenv("no_proxy", "localhost,127.0.0.1")
    monitor = RemoteMonitor(root=server.root, path="/runs?id=3", send_as_json=True)
    monitor.on_epoch_end(0, {"loss": 0.5})
    (request,) = server.requests
    assert request["path"] == "/runs?id=3"
    assert "Proxy-Authorization" not in request["headers"]


def test_a_host_name_is_looked_up(server, no_proxy_settings):
    monitor = RemoteMonitor(root=server.root.replace("127.0.0.1", "localhost"), send_as_json=True)
    monitor.on_epoch_end(1, {"loss": 0.75})
    (request,) = server.requests
    assert request["headers"]["Host"] == f"localhost:{server.httpd.server_address[1]}"
    assert json.loads(request["body"]) == {"epoch": 1, "loss": 0.75}


@pytest.mark.parametrize("send_as_json", [True, False], ids=["json", "form"])
def test_the_request_is_byte_for_byte_the_one_keras_remote_monitor_sends(server, send_as_json, no_proxy_settings):
    keras = pytest.importorskip("keras")
    assert os.environ["KERAS_BACKEND"] == "torch"
    logs = {"loss": np.float32(0.25), "accuracy": 0.75, "val_loss": 1.5, "count": np.int64(3), "name": "run é"}
    kwargs = {"root": server.root, "path": "/runs/1", "field": "payload", "send_as_json": send_as_json}
    keras.callbacks.RemoteMonitor(**kwargs).on_epoch_end(2, dict(logs))
    RemoteMonitor(**kwargs).on_epoch_end(2, dict(logs))
    theirs, ours = server.requests
    assert ours["path"] == theirs["path"] == "/runs/1"
    assert ours["body"] == theirs["body"]
    assert ours["headers"] == theirs["headers"]  # User-Agent, Content-Type, Content-Length... as requests sets them
    with_headers = {**kwargs, "headers": {"X-Token": "secret"}}
    keras.callbacks.RemoteMonitor(**with_headers).on_epoch_end(0, {"loss": 1.0})
    RemoteMonitor(**with_headers).on_epoch_end(0, {"loss": 1.0})
    theirs, ours = server.requests[2:]
    assert ours["body"] == theirs["body"] and ours["headers"] == theirs["headers"]
    assert ours["headers"]["X-Token"] == "secret"
