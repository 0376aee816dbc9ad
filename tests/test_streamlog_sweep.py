"""Over days, what a daemon keeps of streams that are gone: their logs, and their record.

In-process: the log sweep on a directory of files with chosen ages, and the
supervisor's bounded history of ended streams.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from streamalchemy.core.spec import StreamSpec, spec_from_request
from streamalchemy.supervision import procs, supervisor
from streamalchemy.supervision.streamlog import sweep_logs

DAY = 86400.0
NOW = 1_900_000_000.0


def log_files(directory: Path, name: str, age: float, backups: int = 0) -> None:
    for suffix in ["", *(f".{i}" for i in range(1, backups + 1))]:
        path = directory / f"{name}.log{suffix}"
        path.write_text("a line\n")
        os.utime(path, (NOW - age, NOW - age))


def names_in(directory: Path) -> set[str]:
    return {p.name.split(".log")[0] for p in directory.iterdir()}


def test_logs_of_gone_streams_go_after_a_week_those_of_kept_ones_stay(tmp_path: Path) -> None:
    log_files(tmp_path, "old", 8 * DAY, backups=2)
    log_files(tmp_path, "recent", 1 * DAY)
    log_files(tmp_path, "saved", 30 * DAY, backups=1)
    (tmp_path / "notes.txt").write_text("not a stream log")
    gone = sweep_logs(tmp_path, {"saved"}, NOW)
    assert gone == ["old"]
    assert names_in(tmp_path) == {"recent", "saved", "notes.txt"}
    assert (tmp_path / "saved.log.1").exists()


def test_only_the_most_recent_gone_names_keep_their_logs(tmp_path: Path) -> None:
    for i in range(12):
        log_files(tmp_path, f"s{i:02d}", i * 60.0)  # s00 is the newest
    gone = sweep_logs(tmp_path, {"s11"}, NOW, max_names=5)
    assert sorted(gone) == [f"s{i:02d}" for i in range(5, 11)]
    assert names_in(tmp_path) == {"s00", "s01", "s02", "s03", "s04", "s11"}


def test_a_missing_directory_sweeps_nothing(tmp_path: Path) -> None:
    assert sweep_logs(tmp_path / "nope", set(), NOW) == []


@dataclass
class Ended:
    spec: StreamSpec
    active: bool = False


def test_ended_streams_leave_the_list_for_a_bounded_history(tmp_path: Path) -> None:
    sup = supervisor.Supervisor(
        record=procs.ChildRecord(tmp_path / "children.json"),
        log_dir=tmp_path,
        stall_timeout=20,
        on_end=lambda s: None,
        tick_every=None,
    )
    runs = [Ended(spec_from_request({"name": f"s{i}", "testsrc": True})) for i in range(150)]
    for run in runs:
        sup.streams[run.spec.name] = run  # type: ignore[assignment]
    live = runs[0]
    live.active = True
    for run in runs:
        sup.forget(run)  # type: ignore[arg-type]
    assert list(sup.streams) == ["s0"]  # an active stream is never forgotten
    assert len(sup.ended) == supervisor.ENDED_KEPT
    assert list(sup.ended)[-1] == "s149" and "s1" not in sup.ended
    again = Ended(runs[149].spec)
    sup.streams["s149"] = again  # type: ignore[assignment]
    sup.forget(runs[149])  # type: ignore[arg-type]  # an older run: the new one stays
    assert sup.streams["s149"] is again
