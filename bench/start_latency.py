"""Start latency: ``streamalchemy start NAME --file clip.mp4 --codec copy --output null``,
from launching the command until the stream's FFmpeg has reported its first frame,
against the floor: the same source probe (``ffprobe``, as the daemon's source check
runs it) followed by the same FFmpeg argv spawned directly, until its first progress
block with frame > 0.

Rounds alternate floor and start, so that the machine's noise falls on both alike.
The daemon runs throughout (a start never pays for the daemon's launch); between
rounds the stream is stopped (``DELETE /streams/NAME``), so each start is a new one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.cli_latency import console_script
from bench.common import (
    BenchError,
    Daemon,
    Row,
    Sample,
    daemon_argvs,
    env_for,
    http,
    log,
    make_clip,
    temp_home,
    write_state,
)
from bench.floor import Children

TARGET = 1.25  # issue 15: at most this many times the floor
NAME = "lat"
POLL = 0.005  # seconds between GET /streams/NAME once the command has returned


def probe_argv(ffprobe: str, clip: Path) -> list[str]:
    """What ``sources.check_source`` runs for a file source."""
    return [ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries",
            "stream=codec_type", "-of", "csv=p=0", str(clip)]  # fmt: skip


def floor_once(probe: list[str], argv: list[str], timeout: float = 30.0) -> float:
    """Probe, then spawn FFmpeg directly; seconds until its first frame is reported."""
    t0 = time.monotonic()
    done = subprocess.run(probe, capture_output=True, text=True, timeout=timeout)
    if "video" not in done.stdout:
        raise BenchError(f"ffprobe does not see a video stream: {done.stderr.strip()}")
    children = Children([argv], stderr=False)
    try:
        while not children.frames[0]:
            if time.monotonic() - t0 > timeout:
                raise BenchError("floor: FFmpeg reported no frame in time")
            children.pump(0.5)
        return time.monotonic() - t0
    finally:
        children.kill()


def start_once(daemon: Daemon, cmd: list[str], env: dict[str, str], home: Path) -> float:
    """Run ``streamalchemy start``; seconds until the stream has reported a frame."""
    t0 = time.monotonic()
    done = subprocess.run(cmd, env=env, cwd=home, capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode()}")
    # ``start`` returns once FFmpeg's first progress report came; that may say frame=0.
    while True:
        stream = daemon.get(f"/streams/{NAME}").get("stream") or {}
        if (stream.get("frames") or 0) > 0:
            return time.monotonic() - t0
        if time.monotonic() - t0 > 60:
            raise BenchError(f"the started stream reported no frame: {stream}")
        time.sleep(POLL)


def stop_stream(daemon: Daemon) -> None:
    reply = http(daemon.socket, "DELETE", f"/streams/{NAME}")
    if not reply.get("success"):
        raise BenchError(f"cannot stop {NAME}: {reply}")


def run(quick: bool = False) -> tuple[list[Row], str]:
    rounds = 5 if quick else 15
    with temp_home("start") as home:
        clip = make_clip(home)
        argv = daemon_argvs(home, write_state(home, clip, 1))[0]
        (home / "active_streams.json").unlink()
        from streamalchemy.settings import load_settings

        probe = probe_argv(load_settings(env=env_for(home)).ffprobe, clip)
        script, how = console_script(home)
        cmd = [script, "start", NAME, "--file", str(clip), "--codec", "copy", "--output", "null"]
        env = env_for(home)
        floor, start = Sample(), Sample()
        daemon = Daemon(home)
        try:
            daemon.wait_ready()
            # One unmeasured round of each: page cache, encoder cache, byte code.
            floor_once(probe, argv)
            start_once(daemon, cmd, env, home)
            stop_stream(daemon)
            for i in range(rounds):
                floor.values.append(floor_once(probe, argv) * 1000)
                time.sleep(0.2)
                start.values.append(start_once(daemon, cmd, env, home) * 1000)
                stop_stream(daemon)
                time.sleep(0.2)
                log(f"start latency round {i + 1}/{rounds}: floor {floor.values[-1]:.0f} ms, "
                    f"start {start.values[-1]:.0f} ms")  # fmt: skip
        finally:
            daemon.stop()
    row = Row("Start latency", "`streamalchemy start` of a file stream to its first frame",
              "ms", start, floor, "ffprobe + the same FFmpeg spawned directly",
              target_ratio=TARGET, note=f"{rounds} rounds, alternating")  # fmt: skip
    return [row], how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, how = run(args.quick)
    print(how)
    for row in rows:
        print(json.dumps(row.to_json()))


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
