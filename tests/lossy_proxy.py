"""A TCP proxy in front of a real server that loses answers on purpose: what a retried call meets
when the server did the work but its reply never came back (a connection cut after the commit: a
balancer or replica gone, the network).

``proxy = LossyProxy("127.0.0.1:PORT")``; point a client at ``proxy.address``. ``proxy.hold()``:
from now on nothing the server sends reaches the clients (their calls under way go on on the
server); ``proxy.cut()``: close every connection made so far, so each call under way fails
UNAVAILABLE and a client retries it on a new connection, passed through again.
``with proxy.losing_answers(done): <send the call>`` does both around a call: its answer held
back until ``done()`` says the server did the work, then the connection cut.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator


class LossyProxy:
    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._holding = False
        self._closed = False
        self.connections = 0  # accepted so far
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        """Drop what the server sends from now on (until :meth:`cut`)."""
        with self._lock:
            self._holding = True

    def cut(self) -> None:
        """Close every connection made so far; new ones are passed through again."""
        with self._lock:
            pairs, self._pairs, self._holding = self._pairs, [], False
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    @contextlib.contextmanager
    def losing_answers(self, done: Callable[[], bool], timeout: float = 60.0) -> Iterator[None]:
        """Hold the server's answers while the body sends a call; once it returns, wait until
        ``done()`` (the server did the work, and whatever else the test wants meanwhile), then
        cut: the call's answer is lost and its client retries it."""
        self.hold()
        try:
            yield
            end = time.monotonic() + timeout
            while not done():
                if time.monotonic() > end:
                    raise AssertionError("the server never did the work whose answer is lost")
                time.sleep(0.02)
        finally:
            self.cut()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.target)
            except OSError:
                down.close()
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((down, up))
                self.connections += 1
            threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_server and self._holding:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
