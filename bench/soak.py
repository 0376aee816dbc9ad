"""Soak: a mix of streams left running, flapping streams, random FFmpeg kills and daemon restarts.

Streams: a test pattern to HLS, a test pattern recorded to an MP4 file, a short clip
served by a local HTTP server relayed by URL (it ends every few seconds), and a test
pattern pushed to an FFmpeg RTSP receiver in listen mode (which exits with each
client, and is started again). Every ``--event-every`` seconds, at random, one
stream's FFmpeg is SIGKILLed or the daemon is restarted (SIGTERM, then a new
``daemon run`` that restores the streams; ``--daemon-restarts 0`` for none, so that
one daemon's memory is followed over the whole run). Every ``--flap-every`` seconds a
uniquely named, time-limited stream is started (as scripts do): it finishes by
itself, or is stopped by hand one time in three.

Every sample reports the disk used by the home (state, logs, HLS; recordings are
written outside it), the files in the HLS directory, the daemon's resident memory,
the streams missing from the state file, the recording files, the daemon's open
fds and threads, the files in the home and the stream log files, and the streams
`list` shows; the end checks that no recording lost a byte and every one plays.

    python -m bench.soak                 # an hour
    python -m bench.soak --minutes 4     # a smoke run
    python -m bench.soak --hours 24      # a day
    python -m bench.soak --no-doc        # print only

Every process it starts is stopped by PID; nothing is written outside its
temporary directories except its section of docs/benchmarks.md (between
``<!-- soak:begin -->`` and ``<!-- soak:end -->``, unless ``--no-doc``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    FFMPEG,
    PYTHON,
    BenchError,
    Daemon,
    env_for,
    ffmpeg_version,
    log,
    make_clip,
    temp_home,
    write_section,
)

FFPROBE = FFMPEG.replace("ffmpeg", "ffprobe") if "ffmpeg" in FFMPEG else "ffprobe"
SMALL = ["--resolution", "480", "--fps", "10"]
TINY = ["--resolution", "480", "--fps", "5"]
LOG_MAX_BYTES = 256 << 10  # small enough that the soak sees rotation in minutes
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
METHOD = f"""How it runs: one private `STREAMALCHEMY_HOME` with `STREAMALCHEMY_LOG_MAX_BYTES` at
{LOG_MAX_BYTES // 1024} KiB; four streams started with the CLI: `--testsrc --resolution 480
--fps 10 --output hls`, the same to an MP4 file in a directory outside the home, `--url`
of an 8 s clip served by Python's `http.server` with `--codec copy --output null` (it ends
every 8 s, so it is restarted all the time), and the test pattern pushed to
`ffmpeg -rtsp_flags listen` (restarted by the bench each time it exits with its client).
Every 10-30 s one event at random: a SIGKILL of one stream's FFmpeg process group (3 in 4)
or a daemon restart (SIGTERM, then `daemon run`, which restores the four streams; the
share is `--daemon-restarts`, 0 to follow one daemon's memory over the whole run). Every
`--flap-every` seconds (10) a uniquely named test pattern (`--resolution 480 --fps 5
--output null --duration` 5-30 s) is started, as scripts do; one in three is stopped by
hand. At each sample: disk blocks under the home, files in `hls/hls/`, the daemon's RSS,
open fds and threads, the files in the home and in `logs/streams/`, the streams `list`
shows, names missing from `active_streams.json`, and the FFmpeg processes per stream. A
recording file no longer written must never shrink (bytes lost = the sum of any
shrinking) and must play in `ffprobe` at the end. The home's disk dips after each daemon
restart because a restore is a new start of the HLS stream and clears its directory.
"""


def cli(home: Path, *args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [PYTHON, "-m", "streamalchemy", *args, "--json"],
        env={**env_for(home), "STREAMALCHEMY_LOG_MAX_BYTES": str(LOG_MAX_BYTES)},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    try:
        return proc.returncode, json.loads(proc.stdout or "{}")
    except ValueError:
        return proc.returncode, {"message": proc.stdout + proc.stderr}


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Receiver:
    """``ffmpeg -rtsp_flags listen``: one client at a time, so started again when it exits."""

    def __init__(self, port: int) -> None:
        self.url = f"rtsp://127.0.0.1:{port}/x"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.proc = subprocess.Popen(
                [
                    *(FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"),
                    *("-rtsp_flags", "listen", "-timeout", "600", "-i", self.url),
                    *("-f", "null", "-"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.starts += 1
            while self.proc.poll() is None and not self._stop.is_set():
                time.sleep(0.2)
            time.sleep(0.3)

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._thread.join(10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def disk_kib(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total // 1024


@dataclass
class Soak:
    home: Path
    recdir: Path
    names: list[str]
    rand: random.Random
    markers: dict[str, str] = field(default_factory=dict)  # name -> a piece of its argv
    daemon: Daemon | None = None
    events: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    # Each recording file's largest size seen while it was no longer being written.
    closed_sizes: dict[str, int] = field(default_factory=dict)
    ffmpeg_kills: int = 0
    daemon_restarts: int = 0
    missing_worst: int = 0
    duplicates_worst: int = 0
    flaps: int = 0

    def start_daemon(self) -> None:
        os.environ["STREAMALCHEMY_LOG_MAX_BYTES"] = str(LOG_MAX_BYTES)
        self.daemon = Daemon(self.home)
        self.daemon.wait_ready()

    def restart_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.stop()
        self.start_daemon()
        self.daemon_restarts += 1

    def streams(self) -> dict[str, dict[str, Any]]:
        assert self.daemon is not None
        return {s["name"]: s for s in self.daemon.streams()}

    def kill_one(self) -> None:
        name = self.rand.choice(self.names)
        pid = self.streams().get(name, {}).get("pid")
        if isinstance(pid, int):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self.ffmpeg_kills += 1

    def flap(self, seconds: float) -> None:
        """A uniquely named stream that ends by itself (or is stopped by hand, 1 in 3)."""
        self.flaps += 1
        name = f"flap{self.flaps}"
        code, doc = cli(self.home, "start", name, "--testsrc", *TINY, "--output", "null",
                        "--duration", f"{seconds:.0f}s")  # fmt: skip
        if code != 0:
            self.events.append(f"flap {name} failed to start: {doc.get('message')}")
        if self.flaps % 3 == 0:
            cli(self.home, "stop", f"flap{self.flaps - 1}")

    def sample(self, t: float) -> dict[str, Any]:
        assert self.daemon is not None
        running = self.streams()
        saved = json.loads((self.home / "active_streams.json").read_text() or "{}")
        missing = [n for n in self.names if n not in saved]
        counts = dict.fromkeys(self.names, 0)
        for child in self.daemon.children():
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(child.cmdline())
                for name, marker in self.markers.items():
                    counts[name] += marker in cmd
        self.missing_worst = max(self.missing_worst, len(missing))
        self.duplicates_worst = max(self.duplicates_worst, max(counts.values(), default=0))
        current = running.get("rec", {}).get("current_output")
        recs = sorted(self.recdir.glob("rec*.mp4"))
        for f in recs:
            if str(f) != current:
                size = f.stat().st_size
                self.closed_sizes[f.name] = max(self.closed_sizes.get(f.name, 0), size)
        try:
            me = psutil.Process(self.daemon.pid)
            rss, fds, threads = me.memory_info().rss / 2**20, me.num_fds(), me.num_threads()
        except psutil.Error:
            rss, fds, threads = float("nan"), 0, 0
        logs = self.home / "logs" / "streams"
        row = {
            "t": t,
            "home_kib": disk_kib(self.home),
            "logs_kib": disk_kib(self.home / "logs"),
            "hls_files": len(list((self.home / "hls" / "hls").glob("*"))),
            "rec_files": len(recs),
            "rec_mib": sum(f.stat().st_size for f in recs) / 2**20,
            "rss_mib": rss,
            "fds": fds,
            "threads": threads,
            "home_files": sum(len(files) for _, _, files in os.walk(self.home)),
            "log_files": len(list(logs.glob("*.log*"))),
            "listed": len(running),
            "flaps": self.flaps,
            "running": sum(1 for n in self.names if running.get(n, {}).get("status") == "running"),
            "missing": len(missing),
            "kills": self.ffmpeg_kills,
            "restarts": self.daemon_restarts,
        }
        self.samples.append(row)
        return row


def playable(path: Path) -> bool:
    proc = subprocess.run(
        [
            *(FFPROBE, "-v", "error", "-count_packets", "-select_streams", "v:0"),
            *("-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode == 0 and int((proc.stdout.strip() or "0").split(",")[0]) > 0


def run(
    seconds: float,
    sample_every: float,
    event_every: float,
    seed: int,
    daemon_share: float = 0.25,
    flap_every: float = 10.0,
) -> str:
    rand = random.Random(seed)
    with temp_home("soak") as home, temp_home("soak-rec") as recdir, temp_home("soak-www") as www:
        clip = make_clip(www, seconds=8)
        receiver = Receiver(free_port())
        soak = Soak(home, recdir, ["hls", "rec", "relay", "push"], rand)
        try:
            with http_server(www) as base:
                soak.start_daemon()
                starts = {
                    "hls": ["--testsrc", *SMALL, "--output", "hls"],
                    "rec": ["--testsrc", *SMALL, "--output", str(recdir / "rec.mp4")],
                    "relay": [
                        "--url",
                        f"{base}/{clip.name}",
                        "--codec",
                        "copy",
                        "--output",
                        "null",
                    ],
                    "push": ["--testsrc", *SMALL, "--output", receiver.url],
                }
                soak.markers = {
                    "hls": str(home / "hls" / "hls"),
                    "rec": str(recdir),
                    "relay": f"{base}/{clip.name}",
                    "push": receiver.url,
                }
                for name, args in starts.items():
                    code, doc = cli(home, "start", name, *args)
                    if code != 0:
                        raise BenchError(f"start {name} failed ({code}): {doc.get('message')}")
                log(f"soak: 4 streams up; running {seconds:g}s")
                t0 = time.monotonic()
                next_sample, next_event, next_flap = 0.0, event_every, flap_every
                while (now := time.monotonic() - t0) < seconds:
                    if flap_every and now >= next_flap:
                        soak.flap(rand.uniform(5, 30))
                        next_flap = now + flap_every
                    if now >= next_event:
                        if rand.random() < daemon_share:
                            soak.restart_daemon()
                            soak.events.append(f"{now:.0f}s daemon restart")
                        else:
                            soak.kill_one()
                        next_event = now + event_every * rand.uniform(0.5, 1.5)
                    if now >= next_sample:
                        row = soak.sample(now)
                        log(
                            f"soak t={now:5.0f}s home={row['home_kib']} KiB "
                            f"hls={row['hls_files']} rss={row['rss_mib']:.1f} MiB "
                            f"fds={row['fds']} threads={row['threads']} "
                            f"files={row['home_files']} logs={row['log_files']} "
                            f"listed={row['listed']} missing={row['missing']} "
                            f"rec={row['rec_files']}"
                        )
                        next_sample = now + sample_every
                    time.sleep(0.5)
                soak.sample(time.monotonic() - t0)
                assert soak.daemon is not None
                soak.daemon.stop()
        finally:
            receiver.stop()
            if soak.daemon is not None:
                soak.daemon.stop()
        recs = sorted(recdir.glob("rec*.mp4"))
        final = {f.name: f.stat().st_size for f in recs}
        lost = sum(max(0, size - final.get(name, 0)) for name, size in soak.closed_sizes.items())
        unplayable = [f.name for f in recs if not playable(f)]
        return report(soak, seconds, lost, unplayable, len(recs), receiver.starts)


def halves(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
    """The largest value in the first and in the second half of ``rows``."""
    mid = max(1, len(rows) // 2)
    first, second = rows[:mid], rows[mid:] or rows[:mid]
    return f"{fmt.format(max(r[key] for r in first))}, {fmt.format(max(r[key] for r in second))}"


def report(
    soak: Soak, seconds: float, lost: int, unplayable: list[str], recs: int, receivers: int
) -> str:
    rows = soak.samples
    step = max(1, len(rows) // 12)
    shown = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
    warm = [r for r in rows if r["t"] >= min(60.0, seconds / 3)] or rows
    lines = [
        f"Soak of {seconds / 60:g} min: 4 streams (HLS, MP4 recording, HTTP clip relay, RTSP "
        f"push to a listen-mode receiver), {soak.flaps} flapping streams (uniquely named, "
        f"5-30 s long, one in three stopped by hand), {soak.ffmpeg_kills} FFmpeg SIGKILLs and "
        f"{soak.daemon_restarts} daemon restarts at random; log cap "
        f"{LOG_MAX_BYTES // 1024} KiB x 3 copies.",
        "",
        "| time | home on disk | of which logs | files in the HLS dir "
        "| recordings (files, MiB) | daemon RSS | fds | threads | files in the home "
        "| stream log files | streams listed | streams running "
        "| missing from state file | flaps | FFmpeg kills | daemon restarts |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in shown:
        lines.append(
            f"| {r['t']:.0f} s | {r['home_kib']} KiB | {r['logs_kib']} KiB | {r['hls_files']} "
            f"| {r['rec_files']}, {r['rec_mib']:.1f} | {r['rss_mib']:.1f} MiB | {r['fds']} "
            f"| {r['threads']} | {r['home_files']} | {r['log_files']} | {r['listed']} "
            f"| {r['running']}/4 | {r['missing']} | {r['flaps']} | {r['kills']} "
            f"| {r['restarts']} |"
        )
    lines += [
        "",
        "Streams running is at the moment of the sample: a stream killed or restored a "
        "moment before is still starting; the relayed clip ends every 8 s and is restarted "
        "with backoff.",
        "",
        "| check | result | target |",
        "|---|---|---|",
        f"| home on disk once warm (after {warm[0]['t']:.0f} s): most in the first half, "
        f"in the second half | {halves(warm, 'home_kib', '{:.0f} KiB')} | no growth |",
        f"| most files in the HLS directory | {max(r['hls_files'] for r in rows)} | <= 6 + 6 |",
        f"| bytes lost from recordings | {lost} | 0 |",
        f"| recording files that do not play (ffprobe) | {len(unplayable)} of {recs} | 0 |",
        f"| streams missing from the state file (worst sample) | {soak.missing_worst} | 0 |",
        f"| most FFmpeg per stream name (worst sample) | {soak.duplicates_worst} | 1 |",
        f"| daemon RSS once warm: most in the first half, in the second half "
        f"| {halves(warm, 'rss_mib', '{:.1f} MiB')} | no growth |",
        f"| daemon fds once warm (first half, second half) "
        f"| {halves(warm, 'fds', '{:d}')} | no growth |",
        f"| daemon threads once warm (first half, second half) "
        f"| {halves(warm, 'threads', '{:d}')} | no growth |",
        f"| streams listed once warm (first half, second half) "
        f"| {halves(warm, 'listed', '{:d}')} | bounded (finished ones leave after 5 min) |",
        f"| stream log files once warm (first half, second half) "
        f"| {halves(warm, 'log_files', '{:d}')} | bounded (logs of 100 gone names) |",
    ]
    return "\n".join(lines) + "\n"


def doc_section(tables: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"{BEGIN}\n## Soak: streams that run for days (bench/soak.py)\n\n"
        f"`bash bench/run.sh --soak` (`python -m bench.soak`; an hour by default, "
        f"`--minutes N` for a shorter run), {when}, {os.cpu_count()} CPUs, "
        f"FFmpeg {ffmpeg_version()}.\n\n{tables}\n{METHOD}{END}\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="how long (default 60)")
    p.add_argument("--hours", type=float, default=None, help="how long, in hours")
    p.add_argument("--sample-every", type=float, default=None, help="seconds between samples")
    p.add_argument("--event-every", type=float, default=20.0, help="mean seconds between faults")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--daemon-restarts", type=float, default=0.25, help="share of faults that restart it"
    )
    p.add_argument("--flap-every", type=float, default=10.0, help="seconds between flaps (0: none)")
    p.add_argument("--no-doc", action="store_true", help="print only; leave docs/ alone")
    args = p.parse_args()
    seconds = args.hours * 3600 if args.hours is not None else args.minutes * 60
    sample_every = args.sample_every or max(10.0, seconds / 60)
    try:
        text = run(
            seconds,
            sample_every,
            args.event_every,
            args.seed,
            daemon_share=args.daemon_restarts,
            flap_every=args.flap_every,
        )
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(text)
    if not args.no_doc:
        write_section(doc_section(text), BEGIN, END)


if __name__ == "__main__":
    main()
