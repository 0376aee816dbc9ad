"""The metrics exposition, in-process: names, labels, absent figures, counters that only grow."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import DAEMON, PER_STREAM, promtool_findings
from streamalchemy import __version__
from streamalchemy.server.metrics import CONTENT_TYPE, DaemonFigures, Metrics


def snapshot(name: str, **figures: Any) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "name": name,
        "status": "running",
        "pid": os.getpid(),  # a live process for psutil to read
        "codec": "h264",
        "encoder": "libx264",
        "source_type": "testsrc",
        "frames": 100,
        "fps": 5.0,
        "output_bytes": 250500,
        "speed": 1.0,
        "restarts": 0,
        "remaining_seconds": 3600.0,
    }
    snap.update(figures)
    return snap


class Fake:
    """The daemon as the collector sees it: snapshots and counters, changed by the test."""

    def __init__(self, *snaps: dict[str, Any]) -> None:
        self.snaps = list(snaps)
        self.figures = DaemonFigures(
            started=1700000000.5,
            restore_results={"restored": 2, "skipped": 1},
            state_writes=7,
            state_write_errors=1,
        )
        self.metrics = Metrics(lambda: self.snaps, lambda: self.figures)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.metrics.exposition().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, metric: str, **labels: str) -> float | None:
        return self.samples().get((metric, tuple(sorted(labels.items()))))


def names_of(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> set[str]:
    return {dict(labels).get("name", "") for metric, labels in samples if metric == name}


def test_every_contract_metric_is_present_per_stream() -> None:
    fake = Fake(snapshot("cam1"), snapshot("cam2"))
    samples = fake.samples()
    for metric in PER_STREAM:
        assert names_of(samples, metric) == {"cam1", "cam2"}, metric
    for metric in DAEMON:
        assert any(m == metric for m, _ in samples), metric
    assert fake.value("streamalchemy_build_info", version=__version__) == 1
    assert fake.value("streamalchemy_daemon_start_time_seconds") == 1700000000.5
    assert fake.value("streamalchemy_restore_results_total", result="restored") == 2
    assert fake.value("streamalchemy_restore_results_total", result="failed") == 0
    assert fake.value("streamalchemy_state_writes_total") == 7
    assert fake.value("streamalchemy_state_write_errors_total") == 1


def test_figures_are_in_base_units() -> None:
    fake = Fake(snapshot("cam1", status="retrying", pid=None))
    assert fake.value("streamalchemy_stream_output_bytes_total", name="cam1") == 250500
    assert fake.value("streamalchemy_stream_up", name="cam1") == 0
    labels = {
        "name": "cam1",
        "status": "retrying",
        "codec": "h264",
        "encoder": "libx264",
        "source_type": "testsrc",
    }
    assert fake.value("streamalchemy_stream_info", **labels) == 1


def test_running_stream_reads_its_process_cpu_and_memory() -> None:
    fake = Fake(snapshot("cam1"))
    assert fake.value("streamalchemy_stream_up", name="cam1") == 1
    assert (fake.value("streamalchemy_stream_cpu_seconds_total", name="cam1") or 0) > 0
    assert (fake.value("streamalchemy_stream_memory_bytes", name="cam1") or 0) > 1 << 20


def test_unknown_figures_are_absent_never_nan() -> None:
    fake = Fake(
        snapshot("new", fps=None, output_bytes=None, speed=None, remaining_seconds=None, pid=None)
    )
    text = fake.metrics.exposition().decode()
    assert "NaN" not in text
    samples = fake.samples()
    for metric in (
        "streamalchemy_stream_fps",
        "streamalchemy_stream_output_bytes_total",
        "streamalchemy_stream_speed",
        "streamalchemy_stream_remaining_seconds",
        "streamalchemy_stream_memory_bytes",
    ):
        assert names_of(samples, metric) == set(), metric
    assert fake.value("streamalchemy_stream_frames_total", name="new") == 100
    assert fake.value("streamalchemy_stream_cpu_seconds_total", name="new") == 0


def test_counters_only_grow_across_ffmpeg_restarts() -> None:
    fake = Fake(snapshot("cam1", frames=100, restarts=0))
    assert fake.value("streamalchemy_stream_frames_total", name="cam1") == 100
    cpu_before = fake.value("streamalchemy_stream_cpu_seconds_total", name="cam1") or 0
    # FFmpeg exited: no process, its last figures stay in the snapshot.
    fake.snaps = [snapshot("cam1", frames=120, restarts=0, pid=None, status="retrying")]
    assert fake.value("streamalchemy_stream_frames_total", name="cam1") == 120
    assert fake.value("streamalchemy_stream_cpu_seconds_total", name="cam1") >= cpu_before
    # A new FFmpeg counts from zero again.
    fake.snaps = [snapshot("cam1", frames=5, restarts=1, pid=os.getppid())]
    assert fake.value("streamalchemy_stream_frames_total", name="cam1") == 125
    assert fake.value("streamalchemy_stream_restarts_total", name="cam1") == 1
    assert fake.value("streamalchemy_stream_cpu_seconds_total", name="cam1") >= cpu_before
    # A user's restart makes a new run whose restarts count from zero: still no going back.
    fake.snaps = [snapshot("cam1", frames=1, restarts=0)]
    assert fake.value("streamalchemy_stream_frames_total", name="cam1") == 126
    assert fake.value("streamalchemy_stream_restarts_total", name="cam1") == 1


def test_a_stream_that_leaves_leaves_the_exposition() -> None:
    fake = Fake(snapshot("cam1"), snapshot("cam2"))
    fake.snaps = [snapshot("cam2")]
    assert names_of(fake.samples(), "streamalchemy_stream_up") == {"cam2"}


def test_label_values_are_escaped() -> None:
    fake = Fake(snapshot('we"ird\\name\n'))
    assert names_of(fake.samples(), "streamalchemy_stream_up") == {'we"ird\\name\n'}


def test_output_bytes_only_grow_across_ffmpeg_restarts() -> None:
    fake = Fake(snapshot("cam1", output_bytes=1000))
    assert fake.value("streamalchemy_stream_output_bytes_total", name="cam1") == 1000
    fake.snaps = [snapshot("cam1", output_bytes=300, restarts=1)]  # a new FFmpeg
    assert fake.value("streamalchemy_stream_output_bytes_total", name="cam1") == 1300


def test_hls_output_bytes_count_the_segments_ffmpeg_deleted(tmp_path: Path) -> None:
    def segment(number: int, size: int) -> Path:
        path = tmp_path / f"segment_{number:05d}.ts"
        path.write_bytes(b"x" * size)
        return path

    first = segment(0, 100)
    fake = Fake(snapshot("hls", output_bytes=None, hls_dir=str(tmp_path)))
    assert fake.value("streamalchemy_stream_output_bytes_total", name="hls") == 100
    first.write_bytes(b"x" * 150)  # still being written
    segment(1, 40)
    assert fake.value("streamalchemy_stream_output_bytes_total", name="hls") == 190
    first.unlink()  # FFmpeg deletes the oldest segment
    segment(2, 10)
    fake.metrics._collector.sample_segments()  # the daemon's sampler, between scrapes
    segment(1, 60)
    assert fake.value("streamalchemy_stream_output_bytes_total", name="hls") == 220
    (tmp_path / "index.m3u8").write_text("#EXTM3U\n")  # the playlist is not a segment
    assert fake.value("streamalchemy_stream_output_bytes_total", name="hls") == 220


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_finds_nothing_to_fix() -> None:
    fake = Fake(snapshot("cam1"), snapshot("cam2", fps=None, remaining_seconds=None))
    assert promtool_findings(fake.metrics.exposition()) == []


def test_restore_results_are_counted() -> None:
    fake = Fake()
    fake.figures.restore_results = fake.metrics.restore_results
    fake.metrics.count_restore(
        {
            "a": {"result": "restored", "reason": "started"},
            "b": {"result": "failed", "reason": "boom"},
            "c": {"result": "restored", "reason": "started"},
        }
    )
    fake.metrics.count_restore({"a": {"result": "skipped", "reason": "running"}})
    assert fake.value("streamalchemy_restore_results_total", result="restored") == 2
    assert fake.value("streamalchemy_restore_results_total", result="skipped") == 1
    assert fake.value("streamalchemy_restore_results_total", result="failed") == 1


def test_no_streams_is_still_a_valid_exposition() -> None:
    fake = Fake()
    samples = fake.samples()
    assert names_of(samples, "streamalchemy_stream_up") == set()
    assert fake.value("streamalchemy_state_writes_total") == 7


def test_tcp_handler_serves_metrics_and_refuses_everything_else() -> None:
    fake = Fake(snapshot("cam1"))

    def ask(method: str, path: str) -> tuple[int, Any]:
        return asyncio.run(fake.metrics.handle_tcp(method, path, {}, {}))

    status, body = ask("GET", "/metrics")
    assert status == 200 and body.content_type == CONTENT_TYPE
    assert b"streamalchemy_stream_up" in body.body
    for method, path in (
        ("GET", "/streams"),
        ("POST", "/streams"),
        ("GET", "/status"),
        ("POST", "/shutdown"),
        ("DELETE", "/streams/cam1"),
        ("POST", "/metrics"),
        ("GET", "/"),
    ):
        status, body = ask(method, path)
        assert status in (403, 404, 405) and body["success"] is False, (method, path)


def test_tcp_refusals_never_repeat_the_request() -> None:
    fake = Fake()
    for method, path in (("X" * 8000, "/metrics"), ("GET", "/" + "rtsp://" * 1000)):
        status, body = asyncio.run(fake.metrics.handle_tcp(method, path, {}, {}))
        assert status in (404, 405) and len(body["message"]) < 100
