"""The agent's connections: at most ``max_connections``, the oldest not yet past the token
check evicted to make room, a few reserve connections for hello and facts alone when every
slot serves a request (uploads, long-polls), and reads that give up at a deadline however
slowly bytes come (a slow-loris client cannot hold a slot).
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

IDLE_READ_S = 30.0  # no byte for this long ends the connection
RESERVE_CONNECTIONS = 4  # over max_connections, one request each, hello and facts only


class Connection:
    """What the server knows of one open connection, for the cap and for eviction."""

    __slots__ = ("sock", "opened", "authenticated", "evicted", "reserve")

    def __init__(self, sock: socket.socket, reserve: bool = False) -> None:
        self.sock = sock
        self.opened = time.monotonic()
        self.authenticated = False  # past the token check, serving a request
        self.evicted = False
        self.reserve = reserve  # over the cap: hello and facts only, then closed


class DeadlineReader(io.RawIOBase):
    """A socket reader that gives up at the handler's deadline, however slowly bytes come."""

    def __init__(self, sock: socket.socket, handler: Any) -> None:
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the client is too slow")
        self._sock.settimeout(min(IDLE_READ_S, left))
        return self._sock.recv_into(buffer)


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], handler: type, max_connections: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.max_connections = max_connections
        self.connections: Dict[socket.socket, Connection] = {}
        self.connections_lock = threading.Lock()
        self.refused = 0
        self.evictions = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            live = [c for c in self.connections.values() if not c.evicted]
            slots = [c for c in live if not c.reserve]
            reserve = False
            if len(slots) >= self.max_connections and not self._evict(slots):
                # every slot serves a request past the token check: the reserve answers
                # hello and facts, so that a client can always learn the agent is there
                spare = [c for c in live if c.reserve]
                if len(spare) >= RESERVE_CONNECTIONS and not self._evict(spare):
                    self.refused += 1
                    self.shutdown_request(request)
                    return
                reserve = True
            self.connections[request] = Connection(request, reserve)
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread could be started: forget it
            self._forget(request)
            raise

    def _evict(self, connections: List[Connection]) -> bool:
        """Make room: close the oldest of ``connections`` not yet past the token check."""
        waiting = [c for c in connections if not c.authenticated]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.opened)
        victim.evicted = True
        self.evictions += 1
        try:
            victim.sock.shutdown(socket.SHUT_RDWR)  # its thread reads EOF and ends
        except OSError:
            pass
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that went away or stalled: nothing to report
        super().handle_error(request, client_address)

    def _forget(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.pop(request, None)

    def connection_state(self, request: Any) -> Optional[Connection]:
        with self.connections_lock:
            return self.connections.get(request)
