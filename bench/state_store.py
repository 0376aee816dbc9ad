"""State store: start/stop entry mutations through persist.StateStore (filelock, read,
fsynced temporary file, backup rotation, rename, directory fsync) against a plain
``json.dump`` + fsync + rename of the same document with no lock and no backups, in
the same run.

The real case is the daemon's one writer thread with a CLI reading the file meanwhile
(``saved``, ``show``, ``list`` of a stream that does not run): one writer process and
one reader process that loads the file every 10 ms, far more often than any user or
monitoring loop; the writer's p99 has a target of 20 ms. The reader's figures have
none: here the writer writes back to back, and filelock's poll only wins the gap
between two of its writes by luck (a daemon writes at a start or a stop, and a CLI
asks the running daemon instead of reading the file). Eight
concurrent writer processes are a stress figure, without a target: the file has one
writer by design. Mutations alternate ``save(name)`` and ``remove(name)`` on a file
that also holds 20 other saved streams, as a daemon does when streams start and stop.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    Row,
    Sample,
    file_config,
    log,
    percentile,
    temp_home,
)

BACKGROUND = 20  # other saved streams in the file
WRITERS = 8

Mutate = Callable[[int], None]


def _store_mutator(path: Path, tag: str) -> Mutate:
    from streamalchemy.persist import StateStore, new_entry

    store = StateStore(path, backup_count=3)
    config = file_config(path.parent / "clip.mp4")

    def mutate(i: int) -> None:
        name = f"{tag}{i // 2:04d}"
        if i % 2 == 0:
            store.save(name, new_entry(config, time.time()))
        else:
            store.remove(name)

    return mutate


def _plain_mutator(path: Path, tag: str) -> Mutate:
    from streamalchemy.persist import new_entry

    doc: dict[str, Any] = json.loads(path.read_text())
    config = file_config(path.parent / "clip.mp4")
    tmp = path.with_name(f".{path.name}.{tag}.tmp")

    def mutate(i: int) -> None:
        name = f"{tag}{i // 2:04d}"
        if i % 2 == 0:
            doc[name] = new_entry(config, time.time())
        else:
            doc.pop(name, None)
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    return mutate


MUTATORS = {"store": _store_mutator, "plain": _plain_mutator}
READ_EVERY = 0.010  # seconds between two loads of the reader


def _store_reader(path: Path) -> Callable[[], object]:
    from streamalchemy.persist import StateStore

    return StateStore(path, backup_count=3).load


def _plain_reader(path: Path) -> Callable[[], object]:
    return lambda: json.loads(path.read_text())


READERS = {"store": _store_reader, "plain": _plain_reader}


def _seed(path: Path) -> None:
    from streamalchemy.persist import new_entry

    for stale in path.parent.glob(f"{path.name}*"):
        stale.unlink()
    doc = {
        f"bg{i:02d}": new_entry(file_config(path.parent / "clip.mp4"), time.time())
        for i in range(BACKGROUND)
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    os.chmod(path, 0o600)


def _timed(mutate: Mutate, count: int) -> tuple[list[float], float, float]:
    """Latencies of ``count`` mutations, and the monotonic start and end."""
    lat = []
    start = time.monotonic()
    for i in range(count):
        t0 = time.perf_counter()
        mutate(i)
        lat.append(time.perf_counter() - t0)
    return lat, start, time.monotonic()


def _worker(kind: str, path: str, tag: str, count: int, barrier: Any, out: Any) -> None:
    mutate = MUTATORS[kind](Path(path), tag)
    barrier.wait(60)
    out.put(_timed(mutate, count))


def _reader(kind: str, path: str, barrier: Any, done: Any, out: Any) -> None:
    load = READERS[kind](Path(path))
    barrier.wait(60)
    lat = []
    while not done.is_set():
        t0 = time.perf_counter()
        load()
        lat.append(time.perf_counter() - t0)
        time.sleep(READ_EVERY)
    out.put(lat)


def writer_and_reader(kind: str, path: Path, total: int) -> tuple[float, list[float], list[float]]:
    """The daemon's writer with a CLI reading meanwhile: the writer's rate and latencies,
    and the reader's load latencies."""
    _seed(path)
    ctx = mp.get_context("fork")
    barrier, done, out = ctx.Barrier(2), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(kind, str(path), barrier, done, out))
    reader.start()
    try:
        mutate = MUTATORS[kind](path, "m")
        barrier.wait(60)
        lat, start, end = _timed(mutate, total)
        done.set()
        read_lat = out.get(timeout=60)
        reader.join(30)
    finally:
        if reader.is_alive():
            reader.kill()
            reader.join(10)
    if reader.exitcode != 0:
        raise BenchError(f"the {kind} reader process failed: {reader.exitcode}")
    return total / (end - start), lat, read_lat


def many_writers(kind: str, path: Path, total: int) -> tuple[float, list[float]]:
    _seed(path)
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(WRITERS), ctx.Queue()
    each = total // WRITERS
    procs = [
        ctx.Process(target=_worker, args=(kind, str(path), f"w{j}-", each, barrier, out))
        for j in range(WRITERS)
    ]
    try:
        for p in procs:
            p.start()
        results = [out.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
    if any(p.exitcode != 0 for p in procs):
        raise BenchError(f"a {kind} writer process failed: {[p.exitcode for p in procs]}")
    lat = [x for r in results for x in r[0]]
    wall = max(r[2] for r in results) - min(r[1] for r in results)
    return len(lat) / wall, lat


P99_TARGET_MS = 20.0  # issue 23: the daemon's writer with a concurrent CLI reader


def _figures() -> dict[str, dict[str, Sample]]:
    return {k: {"rate": Sample(), "p50": Sample(), "p99": Sample()} for k in MUTATORS}


def _add(fig: dict[str, Sample], rate: float | None, lat: list[float]) -> None:
    if rate is not None:
        fig["rate"].values.append(rate)
    fig["p50"].values.append(percentile(lat, 50) * 1000)
    fig["p99"].values.append(percentile(lat, 99) * 1000)


def run(quick: bool = False) -> list[Row]:
    total, reps = (200, 1) if quick else (1000, 3)
    base = "plain json.dump + fsync + rename"
    note = f"{total} mutations per run, {reps} runs"
    rows: list[Row] = []

    def mutation_rows(label: str, fig: dict[str, dict[str, Sample]], target: float | None) -> None:
        rows.extend([
            Row("State store", f"{label}: mutations/s", "/s", fig["store"]["rate"],
                fig["plain"]["rate"], base, higher_is_better=True, note=note),
            Row("State store", f"{label}: p50 latency", "ms", fig["store"]["p50"],
                fig["plain"]["p50"], base, note=note),
            Row("State store", f"{label}: p99 latency", "ms", fig["store"]["p99"],
                fig["plain"]["p99"], base, note=note, target_abs=target),
        ])  # fmt: skip

    with temp_home("store") as home:
        path = home / "active_streams.json"
        writer, reads, stress = _figures(), _figures(), _figures()
        for rep in range(reps):
            for kind in ("plain", "store"):  # interleaved: noise hits both
                rate, lat, read_lat = writer_and_reader(kind, path, total)
                _add(writer[kind], rate, lat)
                _add(reads[kind], None, read_lat)
                rate, lat = many_writers(kind, path, total)
                _add(stress[kind], rate, lat)
            log(
                f"state store run {rep + 1}/{reps}: writer+reader p99 "
                f"{writer['store']['p99'].values[-1]:.1f} ms, reader p99 "
                f"{reads['store']['p99'].values[-1]:.1f} ms, {WRITERS} writers p99 "
                f"{stress['store']['p99'].values[-1]:.1f} ms"
            )
        mutation_rows("writer + CLI reader", writer, P99_TARGET_MS)
        plain_read = "plain json read, no lock"
        rows.extend([
            Row("State store", "writer + CLI reader: the reader's p50 load", "ms",
                reads["store"]["p50"], reads["plain"]["p50"], plain_read, note=note),
            Row("State store", "writer + CLI reader: the reader's p99 load", "ms",
                reads["store"]["p99"], reads["plain"]["p99"], plain_read, note=note),
        ])  # fmt: skip
        mutation_rows(f"{WRITERS} writers (stress)", stress, None)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for row in run(args.quick):
        print(json.dumps(row.to_json()))


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
