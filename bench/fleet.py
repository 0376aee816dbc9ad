"""A fleet on one machine: N daemons as N shards of one apply file, as a StatefulSet runs them.

1. N daemons (N homes) run ``daemon run --apply FILE --shard i/N``;
2. one is killed (SIGKILL) and relaunched on the same home: a pod rescheduled with its volume;
3. the fleet goes to N+1 shards: each daemon is stopped and relaunched with i/(N+1)
   (a StatefulSet rolls its pods when STREAMALCHEMY_SHARDS changes), then the new one starts.

Throughout, a sampler reads every daemon's streams and the process table (each
stream's pid must be a live FFmpeg child of that daemon) and records the most
instances of one stream seen at once, which must never pass 1. Reported per phase:
how many streams moved, and how long until every stream ran exactly once, on its shard.

Usage: bash bench/run.sh --fleet [--shards N] [--streams M] [--write]
(--write puts the table in docs/benchmarks.md, section "Fleet").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    BenchError,
    Daemon,
    kill_pids,
    log,
    make_clip,
    temp_home,
    write_section,
)

BEGIN, END = "<!-- fleet: begin (bench/fleet.py --write) -->", "<!-- fleet: end -->"
CONVERGE_TIMEOUT = 120.0


def owner(name: str, shards: int) -> int:
    from streamalchemy.apply.declarative import owner as rendezvous

    return rendezvous(name, shards)


class Fleet:
    """The daemons, by shard index, and a sampler watching them."""

    def __init__(self, root: Path, apply_file: Path) -> None:
        self.root = root
        self.apply_file = apply_file
        self.daemons: dict[int, Daemon] = {}
        self.shards = 0
        self.lock = threading.Lock()
        self.max_instances = 0
        self.samples = 0
        self.pids: dict[str, set[int]] = collections.defaultdict(set)  # every pid seen per name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, daemon=True)

    def launch(self, index: int, shards: int) -> None:
        home = self.root / f"h{index}"
        home.mkdir(mode=0o700, exist_ok=True)
        args = ("--apply", str(self.apply_file), "--shard", f"{index}/{shards}")
        with self.lock:
            self.daemons[index] = Daemon(home, *args)

    def placement(self, confirmed: bool = False) -> dict[str, list[int]]:
        """Stream name -> the shards where its FFmpeg is a live child of the daemon now
        (``confirmed``: and FFmpeg has reported progress, status running)."""
        wanted = ("running",) if confirmed else ("starting", "running", "retrying", "stopping")
        where: dict[str, list[int]] = collections.defaultdict(list)
        with self.lock:
            daemons = dict(self.daemons)
        for index, daemon in daemons.items():
            if daemon.proc.poll() is not None:
                continue
            try:
                streams = daemon.get("/streams", timeout=10).get("streams", [])
                children = {p.pid for p in psutil.Process(daemon.pid).children(recursive=True)}
            except (OSError, ValueError, psutil.Error):
                continue
            for s in streams:
                if s.get("pid") in children and s.get("status") in wanted:
                    where[s["name"]].append(index)
                    self.pids[s["name"]].add(s["pid"])
        return where

    def _sample_loop(self) -> None:
        while not self._stop.wait(0.25):
            where = self.placement()
            with self.lock:
                self.samples += 1
                self.max_instances = max([self.max_instances, *map(len, where.values())])

    def start_sampling(self) -> None:
        self._thread.start()

    def converged(self, names: list[str], shards: int) -> bool:
        where = self.placement(confirmed=True)
        return all(where.get(n) == [owner(n, shards)] for n in names)

    def wait_converged(self, names: list[str], shards: int, since: float) -> float:
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while time.monotonic() < deadline:
            if self.converged(names, shards):
                return time.monotonic() - since
            time.sleep(0.1)
        where = self.placement(confirmed=True)
        wrong = [n for n in names if where.get(n) != [owner(n, shards)]]
        raise BenchError(f"not converged after {CONVERGE_TIMEOUT:g}s: {wrong[:5]} ...")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for daemon in self.daemons.values():
            daemon.stop()


def run(shards: int, streams: int) -> list[dict[str, Any]]:
    names = [f"cam{i:03d}" for i in range(streams)]
    rows: list[dict[str, Any]] = []
    with temp_home("fleet") as root:
        clip = make_clip(root, seconds=4)
        apply_file = root / "streams.toml"
        apply_file.write_text(
            "".join(
                f'[streams.{n}]\nfile = "{clip}"\ncodec = "copy"\noutput = "null"\n\n'
                for n in names
            )
        )
        fleet = Fleet(root, apply_file)

        def phase(title: str, shards_after: int, change: Any) -> None:
            before = fleet.placement(confirmed=True)
            pids = {n: len(fleet.pids[n]) for n in names}
            t0 = time.monotonic()
            change()
            took = fleet.wait_converged(names, shards_after, t0)
            after = fleet.placement(confirmed=True)
            moved = sum(1 for n in names if before.get(n) and before.get(n) != after.get(n))
            restarted = sum(1 for n in names if pids[n] and len(fleet.pids[n]) > pids[n])
            grown = shards_after > shards
            rows.append(
                {
                    "phase": title,
                    "moved": moved,
                    "expected": sum(1 for n in names if grown and owner(n, shards_after) == shards),
                    "restarted": restarted,
                    "seconds": took,
                }
            )
            log(f"{title}: {moved} moved, {restarted} restarted, converged in {took:.2f}s")

        def launch_all() -> None:
            for i in range(shards):
                fleet.launch(i, shards)

        victim = 1 % shards

        def kill_one() -> None:
            kill_pids([fleet.daemons[victim].pid])  # SIGKILL: its FFmpeg die with it
            fleet.daemons[victim].stop()
            fleet.launch(victim, shards)

        def grow() -> None:
            # A StatefulSet rolls every pod when STREAMALCHEMY_SHARDS changes; the old
            # shards let go of what they lose before the new one starts it.
            for i in range(shards):
                fleet.daemons[i].stop()  # SIGTERM: its streams stop and stay saved
                fleet.launch(i, shards + 1)
            fleet.launch(shards, shards + 1)

        try:
            fleet.start_sampling()
            phase(f"{shards} daemons launched", shards, launch_all)
            phase(f"shard {victim} killed (SIGKILL), relaunched on its home", shards, kill_one)
            phase(f"{shards} -> {shards + 1} shards", shards + 1, grow)
        finally:
            fleet.close()
        log(f"{fleet.samples} samples, at most {fleet.max_instances} instance(s) of a stream")
        if fleet.max_instances > 1:
            raise BenchError(f"a stream ran {fleet.max_instances} times at once")
        if rows[-1]["moved"] != rows[-1]["expected"]:
            raise BenchError(f"{rows[-1]['moved']} streams moved, not {rows[-1]['expected']}")
        for row in rows:
            row["max_instances"] = fleet.max_instances
            row["samples"] = fleet.samples
    return rows


def table(rows: list[dict[str, Any]], shards: int, streams: int) -> str:
    out = [
        f"{streams} streams (`--codec copy` of a 4 s clip, `--output null`) in one apply file, "
        f"{shards} daemons on this machine, each `daemon run --apply FILE --shard i/N` with its "
        "own home. A sampler read every daemon's streams and the process table every 0.25 s "
        "(each stream's pid must be a live FFmpeg child of that daemon). Measured "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end, on a shared 2-core "
        "machine; re-run with "
        "`bash bench/run.sh --fleet --write`.",
        "",
        "| Phase | Streams moved (expected: what the new shard wins) | Streams restarted "
        "| Time until each stream runs once, on its shard |",
        "|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['phase']} | {r['moved']} ({r['expected']}) | {r['restarted']} "
            f"| {r['seconds']:.1f} s |"
        )
    most = rows[0]["max_instances"] if rows else 0
    samples = rows[0]["samples"] if rows else 0
    out += [
        "",
        f"Most instances of one stream seen at once, throughout ({samples} samples): {most} "
        "(never twice: a relaunched shard drops the streams it lost before its restore, and "
        "the new shard starts after the old ones have let go).",
        "",
        "A launch includes each daemon's encoder probe and an `ffprobe` check of every file "
        "source before it starts it, all daemons at once on a shared machine (load above). A "
        "killed shard comes back on its own volume with nothing moved. Going to N+1 shards "
        "rolls every daemon (as a StatefulSet does when `STREAMALCHEMY_SHARDS` changes), so "
        "every stream restarts once, each on the shard it had except the ones the new "
        "shard wins.",
    ]
    return "\n".join(out)


def write_doc(section: str) -> None:
    write_section(f"{BEGIN}\n## Fleet: shards on one machine\n\n{section}\n{END}", BEGIN, END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    try:
        rows = run(args.shards, args.streams)
    except BenchError as exc:
        print(f"bench fleet: {exc}", file=sys.stderr)
        return 1
    section = table(rows, args.shards, args.streams)
    print(section)
    if args.write:
        with contextlib.suppress(OSError):
            write_doc(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
