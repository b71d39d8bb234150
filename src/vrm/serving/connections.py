"""`vrm serve`'s HTTP connections: idle, half-open and slow-sending clients cannot stop it serving requests.

A reward server inside an RL loop must keep answering its trainer whatever else connects to it. uvicorn (0.55,
either of its HTTP/1.1 implementations) as it comes has two gaps there:

* its `limit_concurrency` counts open connections, idle ones included: 128 sockets that connect and never finish
  their headers make it answer 503 to every request, `/health` included, for as long as they stay open;
* nothing times out a request being received: `timeout_keep_alive` only starts once a response is sent, so a
  client may take forever over its headers or its body, holding a socket (and, once its headers are in, a task).

`guarded_protocol(H11Protocol, timeout_request_read)` is uvicorn's h11 protocol with both closed, handed to uvicorn
as its `http` protocol class (`vrm.serving.app.uvicorn_settings`), so every other uvicorn setting and behaviour
stays as it was:

* `limit_concurrency` counts requests being served (received in full, not yet answered): uvicorn compares
  `len(connections)` and `len(tasks)` with the limit when a request's headers arrive; the protocol gives it views
  of the server's two sets whose size is the number of its tasks less those still waiting for their request's
  body (adding and removing still go to the server's own sets, which its shutdown uses). Idle, half-open and
  slow-sending connections never count, so no number of them makes uvicorn answer 503.
* `timeout_request_read`: a connection waiting for a request (from its start, or from the first byte of the next
  request on a kept-alive connection) must deliver it whole, headers and body, within that many seconds; when the
  time is up it gets `408 Request Timeout` and is closed (an app task waiting for the rest of the body sees a
  disconnect). Slow clients are thus dropped after a bounded time; they never block others meanwhile.

What is left bounded by the operating system: each open socket costs a file descriptor (and a timer) until its
deadline, so the process's open-file limit (`ulimit -n`) must exceed the number of such clients to be withstood.

Why a protocol subclass rather than another server: uvicorn (with h11, its one required HTTP dependency; the
optional httptools is not used, so that the guarded protocol is the one tested) is what `vrm[serve]` installs and
what its settings, tests and benchmarks are written against; the guard is a few dozen lines over attributes that
both of uvicorn's HTTP/1.1 protocols share (`cycle`, `transport`, `connections`, `tasks`), and `guarded_protocol`
applies it to either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("vrm.serving.app")

_TIMEOUT_BODY = b'{"detail":"the request was not received in full within timeout_request_read"}'
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


def _receiving_body(connection: Any) -> bool:
    """Whether a connection's request has its headers (and thus an app task) but not yet its whole body."""
    cycle = getattr(connection, "cycle", None)
    return cycle is not None and cycle.more_body and not cycle.response_complete and not cycle.disconnected


class _RequestsView:
    """One of the server's sets (connections or tasks) as uvicorn's concurrency check sees it: `add`, `discard`
    and iteration go to the set itself, `len` is the number of requests being served (tasks less those whose
    body is still arriving)."""

    def __init__(self, items: set, connections: set, tasks: set):
        self._items, self._connections, self._tasks = items, connections, tasks

    def add(self, item: Any) -> None:
        self._items.add(item)

    def discard(self, item: Any) -> None:
        self._items.discard(item)

    def __contains__(self, item: Any) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        receiving = sum(1 for connection in self._connections if _receiving_body(connection))
        return max(0, len(self._tasks) - receiving)


def guarded_protocol(base: type[asyncio.Protocol], timeout_request_read: float) -> type[asyncio.Protocol]:
    """`base` (uvicorn's `H11Protocol` or `HttpToolsProtocol`) with a read timeout of `timeout_request_read`
    seconds per request and a concurrency limit that counts requests only (see the module docstring)."""
    if not timeout_request_read > 0:
        raise ValueError(f"timeout_request_read must be > 0, got {timeout_request_read}")

    class Guarded(base):  # type: ignore[valid-type, misc]
        def __init__(self, config: Any, server_state: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, server_state, *args, **kwargs)
            connections, tasks = server_state.connections, server_state.tasks
            self.connections = _RequestsView(connections, connections, tasks)
            self.tasks = _RequestsView(tasks, connections, tasks)
            self.timeout_request_read = float(timeout_request_read)
            self._read_deadline: asyncio.TimerHandle | None = None

        # the read deadline runs while a request is awaited or being received, from its first byte (from the
        # connection's start for its first request) until its body is complete
        def _awaiting_request(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm_read_deadline(self) -> None:
            if self._read_deadline is None:
                self._read_deadline = self.loop.call_later(self.timeout_request_read, self._read_timed_out)

        def _disarm_read_deadline(self) -> None:
            if self._read_deadline is not None:
                self._read_deadline.cancel()
                self._read_deadline = None

        def _settle_read_deadline(self) -> None:
            if not self._awaiting_request():
                if self.cycle.more_body:  # headers in, body not: e.g. a pipelined request just taken up
                    self._arm_read_deadline()
                else:  # received in full: now it is served (request_timeout_s bounds that)
                    self._disarm_read_deadline()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_read_deadline()

        def data_received(self, data: bytes) -> None:
            if self._awaiting_request():
                self._arm_read_deadline()  # e.g. the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            self._settle_read_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._awaiting_request():
                self._disarm_read_deadline()  # idle: uvicorn's keep-alive timeout takes over
            else:
                self._settle_read_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_read_deadline()
            super().connection_lost(exc)

        def _read_timed_out(self) -> None:
            self._read_deadline = None
            if self.transport.is_closing():
                return
            receiving = not self._awaiting_request()  # its headers are in, its body is not
            logger.debug(
                "closing a connection whose request was not received within timeout_request_read=%gs (%s)",
                self.timeout_request_read,
                "body incomplete" if receiving else "headers incomplete",
            )
            if not (receiving and self.cycle.response_started):
                self.transport.write(REQUEST_TIMEOUT_RESPONSE)
            if receiving:  # its app task waits for the rest of the body: it gets a disconnect
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    Guarded.__module__ = __name__
    return Guarded
