"""The floor a supervisor cannot beat: the same FFmpeg commands, run directly.

``first_progress`` spawns N argvs at once and waits for each one's first progress
block with frame > 0 on its stdout (the restore baseline). Run as a script, it is
a minimal supervisor (one selector loop reading every child's stdout and stderr,
recognising progress blocks and nothing else) whose own CPU time and memory over a
window are the footprint baseline.

Usage: python -m bench.floor ARGV_JSON_FILE SETTLE_SECONDS WINDOW_SECONDS
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence

from bench.common import BenchError, kill_pids
from streamalchemy.supervision.procs import with_parent_death_signal


class Children:
    """N FFmpeg processes, each in its own session, with stdout (and stderr) piped."""

    def __init__(self, argvs: Sequence[Sequence[str]], *, stderr: bool) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sel = selectors.DefaultSelector()
        self.frames = [0] * len(argvs)
        self._partial: dict[int, bytes] = {}
        self._block_frame: dict[int, int] = {}
        try:
            for i, argv in enumerate(argvs):
                # Exactly what the daemon runs: setpriv arms the parent-death signal and
                # execs FFmpeg, so no FFmpeg outlives this process even if it is killed.
                proc = subprocess.Popen(
                    with_parent_death_signal(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
                    start_new_session=True,
                )
                self.procs.append(proc)
                assert proc.stdout is not None
                os.set_blocking(proc.stdout.fileno(), False)
                self.sel.register(proc.stdout, selectors.EVENT_READ, (i, True))
                if proc.stderr is not None:
                    os.set_blocking(proc.stderr.fileno(), False)
                    self.sel.register(proc.stderr, selectors.EVENT_READ, (i, False))
        except BaseException:
            self.kill()
            raise

    def pump(self, timeout: float) -> None:
        """Read whatever is ready; record each finished progress block's frame count."""
        for key, _ in self.sel.select(timeout):
            i, is_progress = key.data
            try:
                data = os.read(key.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                self.sel.unregister(key.fileobj)
                continue
            if not is_progress:
                continue  # the log: read and dropped
            lines = (self._partial.pop(key.fd, b"") + data).split(b"\n")
            if lines[-1]:
                self._partial[key.fd] = lines[-1]
            for line in lines[:-1]:
                if line.startswith(b"frame="):
                    self._block_frame[i] = int(line[6:].strip() or 0)
                elif line.startswith(b"progress="):
                    self.frames[i] = self._block_frame.get(i, 0)
            if self.procs[i].poll() is not None and not self.frames[i]:
                raise BenchError(f"FFmpeg {self.procs[i].args!r} exited early")

    def kill(self) -> None:
        kill_pids([p.pid for p in self.procs])
        for p in self.procs:
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        self.sel.close()


def first_progress(argvs: Sequence[Sequence[str]], timeout: float = 300.0) -> float:
    """Seconds from the first spawn until every child reported frame > 0."""
    t0 = time.monotonic()
    children = Children(argvs, stderr=False)
    try:
        deadline = t0 + timeout
        while not all(children.frames):
            if time.monotonic() > deadline:
                done = sum(1 for f in children.frames if f)
                raise BenchError(f"floor: {done}/{len(argvs)} FFmpeg reported progress in time")
            children.pump(0.5)
        return time.monotonic() - t0
    finally:
        children.kill()


def footprint(argvs: Sequence[Sequence[str]], settle: float, window: float) -> dict[str, float]:
    """This process's CPU seconds and peak RSS while it supervises ``argvs`` for ``window``."""
    children = Children(argvs, stderr=True)
    try:
        deadline = time.monotonic() + 120
        while not all(children.frames):
            if time.monotonic() > deadline:
                raise BenchError("floor: not every FFmpeg reported progress within 120s")
            children.pump(0.5)
        end_settle = time.monotonic() + settle
        while time.monotonic() < end_settle:
            children.pump(0.5)
        cpu0, t0 = time.process_time(), time.monotonic()
        while time.monotonic() - t0 < window:
            children.pump(0.5)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        with open(f"/proc/{os.getpid()}/statm") as f:
            rss = int(f.read().split()[1]) * resource.getpagesize()
        return {"cpu_s": cpu, "wall_s": wall, "rss_bytes": rss}
    finally:
        children.kill()


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        argvs = json.load(f)
    print(json.dumps(footprint(argvs, float(argv[1]), float(argv[2]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
