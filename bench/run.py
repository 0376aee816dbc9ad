"""Run every benchmark, print the table, and write it to docs/benchmarks.md.

Usage: bash bench/run.sh [--quick] [--only NAME ...] [--no-profile] [--out PATH]

A full run (no --quick, no --only) that succeeds writes docs/benchmarks.md; any
other run writes its page under /tmp unless --out says where. A target that is
missed is profiled (cProfile, ``python -X importtime``) and the profile goes into
the page, unless --no-profile; --quick does not profile unless --profile.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import pstats
import re
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import psutil

from bench import cli_latency, footprint, restore, start_latency, state_store
from bench.common import REPO, BenchError, Row, Sample, ffmpeg_version, log

DOC = REPO / "docs" / "benchmarks.md"
ORDER = ("store", "cli", "start", "footprint", "restore")


# -- formatting ------------------------------------------------------------------------


def num(x: float) -> str:
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def spread(s: Sample | None, unit: str) -> str:
    if s is None or not s.values:
        return "—"
    u = "" if unit in ("/s", "") else f" {unit}"
    if unit == "/s":
        u = "/s"
    if len(s.values) == 1:
        return f"{num(s.median)}{u}"
    return f"{num(s.median)}{u} ({num(s.lo)}-{num(s.hi)})"


def target_text(row: Row) -> str:
    if row.target_ratio is not None:
        return f"<= {row.target_ratio:g}x"
    if row.target_abs is not None:
        return f"<= {row.target_abs:g} {row.unit}"
    return "—"


def met_text(row: Row) -> str:
    return {True: "met", False: "**missed**", None: "—"}[row.met]


def table(rows: list[Row]) -> str:
    out = [
        "| Benchmark | Measure | Result, median (min-max) | Baseline | Baseline, median "
        "(min-max) | Ratio | Target | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}x"
        out.append(
            f"| {r.bench} | {r.measure} | {spread(r.result, r.unit)} | {r.baseline_name} | "
            f"{spread(r.baseline, r.unit)} | {ratio} | {target_text(r)} | {met_text(r)} |"
        )
    return "\n".join(out)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cores": f"{psutil.cpu_count(logical=True)} logical ({cpu})",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "ffmpeg": ffmpeg_version(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load": load,
    }


def top_stats(path: Path, sort: str, limit: int = 25) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.strip_dirs().sort_stats(sort).print_stats(limit)
    lines = buf.getvalue().splitlines()
    # Keep the summary line and the table; drop pstats' preamble.
    keep = [ln for ln in lines if ln.strip() and not ln.startswith(("Ordered by", "   List"))]
    return "\n".join(ln.rstrip() for ln in keep[1:] if not ln.endswith(".prof"))


# -- the run ---------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.profiles: list[str] = []
        self.errors: list[str] = []
        self.restore_breakdown: dict[int, restore.Breakdown] = {}


def bench_store(rep: Report, quick: bool) -> None:
    rep.rows += state_store.run(quick)


def bench_cli(rep: Report, quick: bool) -> None:
    rows, how = cli_latency.run(quick)
    rep.rows += rows
    rep.notes.append(f"CLI latency: the console script measured is {how}.")


def bench_start(rep: Report, quick: bool) -> None:
    rows, how = start_latency.run(quick)
    rep.rows += rows
    rep.notes.append(f"Start latency: the console script measured is {how}.")


def bench_footprint(rep: Report, quick: bool) -> None:
    rows, extra = footprint.run(quick)
    rep.rows += rows
    rep.notes.append(
        "Daemon footprint, memory: an interpreter that has only imported "
        f"`streamalchemy.daemon` and `streamalchemy.cli` holds {extra['import_rss_mib']:.1f} MiB; "
        f"the minimal supervision loop of `bench/floor.py` holds {extra['floor_rss_mib']:.1f} MiB "
        f"with the same {footprint.STREAMS} FFmpeg."
    )


def bench_restore(rep: Report, quick: bool) -> None:
    rows, breakdowns = restore.run(quick)
    rep.rows += rows
    rep.restore_breakdown = breakdowns


BENCHES: dict[str, Callable[[Report, bool], None]] = {
    "store": bench_store,
    "cli": bench_cli,
    "start": bench_start,
    "footprint": bench_footprint,
    "restore": bench_restore,
}


def profile_misses(rep: Report, workdir: Path) -> None:
    for row in rep.rows:
        if row.met is not False:
            continue
        log(f"profiling the miss: {row.bench}, {row.measure}")
        try:
            if row.bench == "Restore":
                n = int(row.measure.split("=")[1].split(":")[0])
                out = workdir / f"restore-{n}.prof"
                took = restore.profile(n, out)
                rep.profiles.append(
                    f"### Restore, N = {n}: cProfile of the daemon from its first line until "
                    f"every stream progresses ({took:.2f}s under the profiler)\n\n"
                    "By own time:\n\n```text\n"
                    + top_stats(out, "tottime")
                    + "\n```\n\nBy cumulative time:\n\n```text\n"
                    + top_stats(out, "cumulative")
                    + "\n```"
                )
            elif row.bench == "CLI latency":
                args = tuple(row.measure.strip("`").split()[1:])
                rep.profiles.append(
                    f"### CLI latency, `streamalchemy {' '.join(args)}`: "
                    "`python -X importtime`, heaviest imports\n\n```text\n"
                    + cli_latency.importtime(args)
                    + "\n```"
                )
            elif row.bench == "Daemon footprint" and row.unit == "%":
                out = workdir / "footprint.prof"
                fig = footprint.profile(30.0, out)
                pct = 100 * fig["cpu_s"] / fig["wall_s"]
                rep.profiles.append(
                    "### Daemon footprint, CPU: cProfile of the event loop over a steady 30 s "
                    f"window with {footprint.STREAMS} streams ({pct:.2f}% of a core under the "
                    "profiler)\n\n"
                    "By own time:\n\n```text\n" + top_stats(out, "tottime") + "\n```"
                )
            elif row.bench == "Daemon footprint":
                rep.profiles.append(
                    "### Daemon footprint, memory\n\nSee the memory note above: import cost "
                    "against the cost per supervised stream."
                )
        except (BenchError, OSError) as exc:
            rep.errors.append(f"profiling {row.bench} / {row.measure} failed: {exc}")


def breakdown_md(rep: Report) -> str:
    if not rep.restore_breakdown:
        return ""
    out = [
        "Where a restore's time goes (seconds after `daemon run` is launched, medians, "
        "from the daemon's log):",
        "",
        "| N | socket bound, restore begins | last stream launched | all streams progressing |"
        " floor |",
        "|---|---|---|---|---|",
    ]
    floors = {int(r.measure.split("=")[1].split(":")[0]): r.baseline for r in rep.rows
              if r.bench == "Restore"}  # fmt: skip
    for n, bd in rep.restore_breakdown.items():
        if not bd.total.values:
            continue
        out.append(
            f"| {n} | {spread(bd.listening, 's')} | {spread(bd.last_launch, 's')} | "
            f"{spread(bd.total, 's')} | {spread(floors.get(n), 's')} |"
        )
    return "\n".join(out)


METHOD = """\
## Method

Every figure is the median over repeated runs with the range in brackets, and is
set against a baseline measured in the same run, interleaved with it, because this
machine is shared and noisy. Each benchmark runs in its own temporary
`STREAMALCHEMY_HOME` with a 10 s 320x240 H.264 clip that FFmpeg makes
for it; every process it starts is stopped by PID.

- **Restore**: the state file holds N (50, 200, 400) saved `--file clip.mp4 --codec copy
  --output null` streams. Timed from launching `python -m streamalchemy daemon run` until
  `GET /streams` (polled every 0.1 s on the socket) shows every stream with `frames` > 0. The floor
  spawns the very command the daemon runs for those entries (`ffmpeg.build_argv`, behind
  `setpriv --pdeathsig KILL` as `procs.spawn` does), all at once, and waits for each
  one's first `-progress` block with `frame` > 0. A 5-stream warm-up
  restore first fills the page cache and the daemon's encoder cache, as on a machine
  where the daemon has run before. The poll costs the daemon a `GET /streams` every 0.1 s,
  every 0.02 s once 90% of the streams progress, so that the last ones are timed within
  ~0.01 s on average (the floor sees each progress block at once).
- **Start latency**: with the daemon up, `streamalchemy start NAME --file clip.mp4 --codec
  copy --output null` from launching the command until the stream reports frames > 0
  (`start` itself returns at FFmpeg's first progress report; `GET /streams/NAME` is polled
  every 5 ms after it, if that report said frame 0), then the stream is stopped. The
  floor, in alternate rounds: the same `ffprobe` the daemon runs on a file source, then the
  same FFmpeg argv spawned directly, until its first progress block with frame > 0.
- **CLI latency**: the daemon supervises 20 such streams; each round runs `python -c pass`
  and every command once, in turn; wall time of the whole process, stdout captured.
- **Daemon footprint**: 200 streams; after all progress and 5 s more, the daemon's own
  user + system CPU time (psutil, children excluded) over the window, as a percentage of
  one core, and its peak resident memory sampled every second. The CPU baseline is
  `bench/floor.py`, one selector loop reading the same 200 FFmpeg's progress and logs;
  the memory baseline is a bare interpreter.
- **State store**: alternate `StateStore.save(name)` / `remove(name)` on a file that also
  holds 20 other streams (lock, read, fsynced temporary file, backup rotation, rename,
  directory fsync), against writing the same document with `json.dump` + fsync + rename,
  no lock, no backups. With 8 writers, 8 processes share the mutations and start together;
  throughput is all mutations over the wall time, latency includes waiting for the lock.
  The 8-writer latency is lock waiting, not writing. A waiter sleeps in `flock` (in a
  helper thread, for the timeout) and is woken at the release, and a writer yields
  after its release so that a woken waiter goes first: with the lock about fair, p50
  is about 8 writes (~10 ms) and p99 stays near twice that, where the 10 ms poll it
  replaced gave a p99 of ~200 ms. The baseline takes no lock at all, so its concurrent
  writers overwrite each other's entries; ours loses none.
"""


def render(rep: Report, info: dict[str, str], quick: bool) -> str:
    parts = [
        "# Benchmarks",
        "",
        "How fast StreamAlchemy brings streams back and how little it costs while it "
        "watches them. Re-run with `bash bench/run.sh` (about 10 minutes; "
        "`bash bench/run.sh --quick` for a smoke run that does not touch this page).",
        "",
        f"- Date: {info['date']}" + (" — **quick smoke run, not for comparison**" if quick else ""),
        f"- Machine: {info['cores']}, {info['memory']} RAM, {info['os']}; "
        f"load average at start {info['load']}",
        f"- FFmpeg {info['ffmpeg']}, Python {info['python']}",
        "",
        "## Results",
        "",
        table(rep.rows),
        "",
        "Ratio is result ÷ baseline (for mutations/s, below 1 means slower than the baseline).",
        "",
    ]
    bd = breakdown_md(rep)
    if bd:
        parts += [bd, ""]
    parts += [f"{note}\n" for note in rep.notes]
    if rep.errors:
        parts += ["## Errors", ""] + [f"- {e}" for e in rep.errors] + [""]
    parts.append(METHOD)
    if rep.profiles:
        parts += ["## Profiles of the misses", ""] + [f"{p}\n" for p in rep.profiles]
    return "\n".join(parts).rstrip() + "\n"


def kept_sections(page: Path) -> str:
    """The sections other benchmarks write into the page (between their own markers, from
    the first ``<!-- NAME:begin`` on): this run replaces only what comes before them."""
    try:
        text = page.read_text()
    except OSError:
        return ""
    match = re.search(r"^<!-- ?[\w-]+: ?begin", text, re.MULTILINE)
    return "\n" + text[match.start() :] if match else ""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller N")
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run only these")
    parser.add_argument("--no-profile", action="store_true", help="do not profile misses")
    parser.add_argument("--profile", action="store_true", help="profile misses even in --quick")
    parser.add_argument("--out", type=Path, help="where to write the page")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every finally block stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine()
    rep = Report()
    for name in args.only or ORDER:
        log(f"== {name}")
        try:
            BENCHES[name](rep, args.quick)
        except BenchError as exc:
            log(f"{name} FAILED: {exc}")
            rep.errors.append(f"{name}: {exc}")
        except Exception as exc:
            traceback.print_exc()
            rep.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    profile = not args.no_profile and (args.profile or not args.quick)
    if profile:
        with tempfile.TemporaryDirectory(prefix="sab-prof-", dir="/tmp") as tmp:
            profile_misses(rep, Path(tmp))
    page = render(rep, info, args.quick)
    full = not args.quick and not args.only and not rep.errors
    out = args.out or (DOC if full else Path(f"/tmp/streamalchemy-bench-{int(time.time())}.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page + kept_sections(out))
    print(table(rep.rows))
    for err in rep.errors:
        print(f"ERROR: {err}", file=sys.stderr)
    print(f"\nwritten to {out}", file=sys.stderr)
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
