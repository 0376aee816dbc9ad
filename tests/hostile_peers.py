"""Hostile peers of a TCP address: the attacks of issue 20 on the metrics listener.

``Hostile(host, port)`` runs, until closed, one thread per attack (eight) and a pool
of idle connections that it keeps open (reconnecting those the server closes).
Used by the end-to-end test and by bench/hostile.py. Every socket has a timeout and
every thread stops at ``close()``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

SCHEME_RUN = b"a+.-" * 2048  # 8 KiB of URL-scheme characters: once quadratic to mask


def _long_method(sock: socket.socket) -> None:
    sock.sendall(SCHEME_RUN + b" /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    _read_some(sock)


def _header_flood(sock: socket.socket) -> None:
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    line = b"X-Flood: " + b"v" * 1000 + b"\r\n"
    for _ in range(200):
        sock.sendall(line)
    _read_some(sock)


def _body_flood(sock: socket.socket) -> None:
    sock.sendall(b"POST /metrics HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n")
    chunk = b"{" * 65536
    for _ in range(16):
        sock.sendall(chunk)
    _read_some(sock)


def _slowloris(sock: socket.socket) -> None:
    for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
        sock.sendall(bytes([byte]))
        time.sleep(0.2)


def _garbage(sock: socket.socket) -> None:
    sock.sendall(os.urandom(4096) + b"\r\n\r\n")
    _read_some(sock)


def _reset(sock: socket.socket) -> None:
    sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _never_reads(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    time.sleep(2)


def _chunked(sock: socket.socket) -> None:
    sock.sendall(b"POST /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(100):
        sock.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")
    _read_some(sock)


ATTACKS: dict[str, Callable[[socket.socket], None]] = {
    "long-method": _long_method,
    "header-flood": _header_flood,
    "body-flood": _body_flood,
    "slowloris": _slowloris,
    "garbage": _garbage,
    "reset": _reset,
    "never-reads": _never_reads,
    "chunked": _chunked,
}


def _read_some(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


class Hostile:
    """Eight attacking threads and ``idle`` idle connections against ``host:port``."""

    def __init__(self, host: str, port: int, idle: int = 1100) -> None:
        self.address = (host, port)
        self.stop = threading.Event()
        self.rounds = dict.fromkeys(ATTACKS, 0)
        self.idle: list[socket.socket] = []
        self.reconnects = 0
        self.threads = [
            threading.Thread(target=self._attack, args=(name,), daemon=True) for name in ATTACKS
        ]
        self.threads.append(threading.Thread(target=self._keep_idle, args=(idle,), daemon=True))
        for thread in self.threads:
            thread.start()

    def _connect(self) -> socket.socket | None:
        try:
            return socket.create_connection(self.address, timeout=3)
        except OSError:
            return None

    def _attack(self, name: str) -> None:
        while not self.stop.is_set():
            sock = self._connect()
            if sock is None:
                time.sleep(0.05)
                continue
            with sock, contextlib.suppress(OSError):
                ATTACKS[name](sock)
            self.rounds[name] += 1

    def _keep_idle(self, count: int) -> None:
        """Hold ``count`` connections that send nothing; reopen those the server closed."""
        while not self.stop.is_set():
            closed = [s for s in self.idle if _closed(s)]
            for sock in closed:
                self.idle.remove(sock)
                sock.close()
            while len(self.idle) < count and not self.stop.is_set():
                sock = self._connect()
                if sock is None:
                    break
                sock.setblocking(False)  # so that checking it never waits
                self.idle.append(sock)
                self.reconnects += 1
            self.stop.wait(0.5)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        for sock in self.idle:
            sock.close()
        self.idle.clear()


def _closed(sock: socket.socket) -> bool:
    """Whether the server has answered or closed ``sock`` (it closes right after a reply)."""
    try:
        sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return False  # nothing yet: still idle
    except OSError:
        return True
    return True
