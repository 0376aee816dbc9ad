"""Load: 100 concurrent starts, twice, and 200 streams held (``--codec copy --output null``).

Each start is the request the CLI sends (``POST /streams`` on the socket), 100 at
once from 100 threads, so the figure is the daemon's, not 100 Python start-ups.
After each batch: every stream saved, every stream running, exactly one FFmpeg per
stream (the daemon's children against the pids it reports), the time the batch
took, the daemon's RSS and open files. Then the 200 are held for a while and
checked again (same pids), and stopped with one ``stop --all``.

Usage: bash bench/run.sh load [--batch 100] [--batches 2] [--hold 20] [--no-doc]
Writes its own section of docs/benchmarks.md (between the load markers).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    BenchError,
    Daemon,
    ffmpeg_version,
    log,
    make_clip,
    temp_home,
    write_section,
)

BEGIN, END = "<!-- load:begin -->", "<!-- load:end -->"


def request(sock: Path, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    payload = json.dumps(body).encode() if body is not None else b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(300)
        s.connect(str(sock))
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(content)


def check(daemon: Daemon, home: Path, names: list[str]) -> dict[str, Any]:
    """Saved, running, one FFmpeg each; the daemon's RSS and open files."""
    saved = set(json.loads((home / "active_streams.json").read_text()))
    _, doc = request(daemon.socket, "GET", "/streams")
    streams = {s["name"]: s for s in doc["streams"]}
    running = {n for n, s in streams.items() if s["status"] == "running" and s["pid"]}
    children = [
        p
        for p in daemon.children()
        if p.name() == "ffmpeg" or os.path.basename((p.cmdline() or [""])[0]) == "ffmpeg"
    ]
    child_pids = sorted(p.pid for p in children)
    reported = sorted(streams[n]["pid"] for n in names if n in running)
    proc = psutil.Process(daemon.pid)
    return {
        "saved": len(saved & set(names)),
        "running": len(running & set(names)),
        "ffmpeg": len(child_pids),
        "one_each": child_pids == reported and len(reported) == len(names),
        "rss_mib": proc.memory_info().rss / 2**20,
        "open_files": proc.num_fds(),
        "pids": {n: streams[n]["pid"] for n in names if n in streams},
    }


def run(batch: int, batches: int, hold: float) -> dict[str, Any]:
    with temp_home("load") as home:
        clip = make_clip(home, seconds=10)
        daemon = Daemon(home)
        try:
            daemon.wait_ready()
            rows, names = [], []
            for b in range(batches):
                wave = [f"l{b}{i:03d}" for i in range(batch)]
                bodies = [
                    {"name": n, "file": str(clip), "codec": "copy", "output": "null"} for n in wave
                ]
                t0 = time.perf_counter()
                with ThreadPoolExecutor(batch) as pool:
                    replies = list(
                        pool.map(
                            lambda body: request(daemon.socket, "POST", "/streams", body), bodies
                        )
                    )
                took = time.perf_counter() - t0
                failed = [r[1].get("message") for r in replies if r[0] != 200]
                if failed:
                    raise BenchError(f"{len(failed)} starts failed, first: {failed[0]}")
                names += wave
                figures = check(daemon, home, names)
                log(
                    f"batch {b + 1}: {batch} starts in {took:.2f}s; {figures['running']} running,"
                    f" {figures['ffmpeg']} FFmpeg, RSS {figures['rss_mib']:.0f} MiB,"
                    f" {figures['open_files']} fds"
                )
                rows.append({"batch": b + 1, "seconds": took, **figures})
            time.sleep(hold)
            held = check(daemon, home, names)
            held["same_pids"] = held["pids"] == rows[-1]["pids"]
            t0 = time.perf_counter()
            code, reply = request(daemon.socket, "POST", "/stop", {"names": [], "all": True})
            stop_took = time.perf_counter() - t0
            if code != 200 or len(reply["stopped"]) != len(names):
                raise BenchError(f"stop --all answered {code}: {reply}")
            left = len(daemon.children())
        finally:
            daemon.stop()
    for row in rows:
        row.pop("pids")
    held.pop("pids")
    return {
        "batch": batch,
        "batches": rows,
        "hold_seconds": hold,
        "held": held,
        "stop_all_seconds": stop_took,
        "children_after_stop": left,
        "ffmpeg": ffmpeg_version(),
        "cpus": os.cpu_count(),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        "## Load: 100 concurrent starts, 200 streams held (bench/load.py)",
        "",
        f"{r['date']}, {r['cpus']} CPUs, FFmpeg {r['ffmpeg']}. Each batch is {r['batch']} "
        "`POST /streams` (what `start` sends) from as many threads at once; every stream is "
        "`--file clip.mp4 --codec copy --output null`. Checked after each batch: saved in the "
        "state file, running, and exactly one FFmpeg child per stream (the daemon's children "
        "against the pids it reports).",
        "",
        "| after | batch time | saved | running | FFmpeg | one each | daemon RSS | open files |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["batches"]:
        lines.append(
            f"| batch {row['batch']} | {row['seconds']:.2f} s | {row['saved']} | {row['running']}"
            f" | {row['ffmpeg']} | {'yes' if row['one_each'] else 'NO'} | {row['rss_mib']:.0f} MiB"
            f" | {row['open_files']} |"
        )
    h = r["held"]
    lines.append(
        f"| held {r['hold_seconds']:g} s | | {h['saved']} | {h['running']} | {h['ffmpeg']}"
        f" | {'yes' if h['one_each'] and h['same_pids'] else 'NO'} | {h['rss_mib']:.0f} MiB"
        f" | {h['open_files']} |"
    )
    lines += [
        "",
        f"`stop --all` of the {h['saved']} took {r['stop_all_seconds']:.2f} s and left "
        f"{r['children_after_stop']} children. Reproduce: `bash bench/run.sh load`.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--hold", type=float, default=20.0)
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    try:
        result = run(args.batch, args.batches, args.hold)
    except BenchError as exc:
        print(f"bench load: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(result, indent=1))
    if not args.no_doc:
        write_section(markdown(result), BEGIN, END)


if __name__ == "__main__":
    main()
