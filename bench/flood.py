"""A header flood against the daemon's socket: replies and the daemon's memory.

Usage: bash bench/run.sh --flood [--seconds N]. Clients send a request line and
then 1 KB header lines without end, one connection after another, for N seconds;
the daemon answers 431 and closes each. Prints the daemon's RSS before, right
after and a second after the flood (issue 11: it once grew from 40 MB to 1.2 GB).
"""

from __future__ import annotations

import argparse
import socket
import time

import psutil

from bench.common import Daemon, log, temp_home

LINES = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"v" * 1000) for i in range(1000))


def flood(sock_path: str, seconds: float) -> tuple[int, dict[bytes, int]]:
    """Flood for ``seconds``; return the bytes sent and the count of each reply status."""
    sent, replies = 0, {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(sock_path)
            s.sendall(b"GET /status HTTP/1.1\r\n")
            try:
                while True:
                    s.sendall(LINES)
                    sent += len(LINES)
            except OSError:
                pass  # answered and closed
            reply = b""
            try:
                while chunk := s.recv(65536):
                    reply += chunk
            except OSError:
                pass
            status = reply[9:12] or b"none"
            replies[status] = replies.get(status, 0) + 1
    return sent, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with temp_home("flood") as home:
        daemon = Daemon(home, "--no-restore")
        try:
            daemon.wait_ready()
            proc = psutil.Process(daemon.pid)
            before = proc.memory_info().rss / 2**20
            log(f"flooding the daemon's socket for {args.seconds:g} s")
            sent, replies = flood(str(daemon.socket), args.seconds)
            right_after = proc.memory_info().rss / 2**20
            time.sleep(1)
            after = proc.memory_info().rss / 2**20
            print("| headers sent | connections | replies | RSS before | right after | 1 s after |")
            print("|---|---|---|---|---|---|")
            answers = ", ".join(f"{k.decode()}: {v}" for k, v in sorted(replies.items()))
            print(
                f"| {sent / 2**20:,.0f} MiB | {sum(replies.values())} | {answers} "
                f"| {before:.1f} MiB | {right_after:.1f} MiB | {after:.1f} MiB |"
            )
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
