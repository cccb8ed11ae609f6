"""Helpers of the storage tests: the SQL statements a block of code sends; a relay to the
database whose link can go silent."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import sqlalchemy as sa


@contextlib.contextmanager
def listing_statements(engine: sa.engine.Engine) -> Iterator[list[tuple[str, object]]]:
    """Collects ``(statement, parameters)`` of every ordered read of ``studies`` (a listing page)
    sent through ``engine`` inside the block, for the tests to explain their plans."""
    seen: list[tuple[str, object]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if "FROM studies" in statement and "ORDER BY" in statement:
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)


class Relay:
    """A TCP relay to a database on ``127.0.0.1:port`` whose link can go silent: :meth:`hold`
    keeps every connection open and forwards nothing (a network partition, a hung server),
    :meth:`heal` resets the held connections (as their peers eventually do) and forwards again."""

    def __init__(self, port: int):
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held = False
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                if not self.held:
                    b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_RDWR)

    def hold(self) -> None:
        self.held = True

    def heal(self) -> None:
        held, self.conns = self.conns, []
        for s in held:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.held = False

    def close(self) -> None:
        self.listener.close()
        self.heal()
