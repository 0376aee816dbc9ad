"""FFmpeg's ``-progress`` output, read in whatever chunks the pipe delivers."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamalchemy.supervision.progress import (
    ProgressParser,
    explain_failure,
    name_the_source,
    root_cause,
)


@pytest.fixture(scope="module")
def real_output() -> bytes:
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg, "FFmpeg is needed"
    argv = [
        *(ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"),
        *("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "2"),
        *("-c:v", "libx264", "-preset", "ultrafast"),
        *("-progress", "pipe:1", "-stats_period", "0.2", "-f", "null", "-"),
    ]
    return subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout


def blocks_of(data: bytes, cuts: list[int]) -> list[tuple[int, float | None]]:
    parser = ProgressParser()
    seen = []
    bounds = [0, *sorted(cuts), len(data)]
    for lo, hi in itertools.pairwise(bounds):
        block = parser.feed(data[lo:hi])
        if block is not None:
            seen.append((block.frames, block.speed))
    return seen


def test_a_real_run_ends_with_its_last_frame(real_output: bytes) -> None:
    whole = blocks_of(real_output, [])
    frames = [int(f) for f in re.findall(rb"^frame=(\d+)", real_output, re.M)]
    assert whole == [(frames[-1], whole[-1][1])]
    assert frames[-1] == 50
    assert whole[-1][1] is not None and whole[-1][1] > 0


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_chunking_gives_the_same_blocks(real_output: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(real_output)), max_size=60))
    line_ends = [m.end() for m in re.finditer(rb"progress=\w+\n", real_output)]
    one_block_per_read = blocks_of(real_output, line_ends)
    chunked = blocks_of(real_output, cuts)
    # A read may complete several blocks at once; it reports the newest, never an older one.
    assert chunked and chunked[-1] == one_block_per_read[-1]
    assert set(chunked) <= set(one_block_per_read)
    assert [f for f, _ in chunked] == sorted(f for f, _ in chunked)


def test_values_ffmpeg_prints_when_it_has_none() -> None:
    parser = ProgressParser()
    block = parser.feed(b"frame=1\nfps=0.00\nbitrate=N/A\nspeed=N/A\nprogress=continue\n")
    assert block is not None
    assert (block.frames, block.fps, block.bitrate_kbps, block.speed) == (1, None, None, None)
    block = parser.feed(
        b"frame=7\nfps=3.5\nbitrate=N/A\ntotal_size=N/A\nout_time_us=2000000\nspeed=0.98x\n"
        b"progress=end\n"
    )
    assert block is not None
    assert (block.frames, block.fps, block.bitrate_kbps, block.speed) == (7, 3.5, None, 0.98)


def test_no_figure_until_it_is_known_then_the_bitrate_of_the_last_period() -> None:
    parser = ProgressParser()
    # As FFmpeg 5 reports when its output opens: averages over 12 microseconds.
    block = parser.feed(
        b"frame=1\nfps=0.00\nbitrate=4095333.3kbits/s\ntotal_size=6143\nout_time_us=12\n"
        b"speed=5.95e-05x\nprogress=continue\n"
    )
    assert block is not None
    assert (block.fps, block.bitrate_kbps, block.speed) == (None, None, None)
    block = parser.feed(
        b"frame=21\nfps=10.45\nbitrate=9999.0kbits/s\ntotal_size=256143\n"
        b"out_time_us=2000012\nspeed=0.97x\nprogress=continue\n"
    )
    assert block is not None
    # 250,000 bytes in 2 s of output: 1,000 kb/s, whatever FFmpeg's average says.
    assert (block.fps, block.bitrate_kbps, block.speed) == (10.45, 1000.0, 0.97)


def test_root_cause_and_the_rtsp_hint() -> None:
    lines = [
        "[tcp] Connection to tcp://127.0.0.1:8554?timeout=0 failed: Connection refused",
        "Could not write header for output file #0",
        "Conversion failed!",
    ]
    cause = root_cause(lines)
    assert cause == lines[0]
    hint = explain_failure(cause, "rtsp://127.0.0.1:8554/cam")
    assert "127.0.0.1:8554" in hint and "MediaMTX" in hint and "--output hls" in hint


def test_total_size_is_the_bytes_written_or_unknown() -> None:
    parser = ProgressParser()
    block = parser.feed(b"frame=3\ntotal_size=N/A\nprogress=continue\n")
    assert block is not None and block.total_size is None  # HLS and RTSP say N/A
    block = parser.feed(b"frame=9\ntotal_size=37788\nprogress=continue\n")
    assert block is not None and block.total_size == 37788


def test_a_hidden_sources_error_names_the_source_not_its_socket() -> None:
    argv = ["ffmpeg", "-f", "concat", "-i", "unix:/run/user/0/sa/inputs/cam.sock", "null"]
    cause = "unix:/run/user/0/sa/inputs/cam.sock: Connection refused"
    named = name_the_source(cause, argv, "rtsp://***:***@10.0.0.7/stream")
    assert named == "rtsp://***:***@10.0.0.7/stream: Connection refused"
    assert name_the_source("Connection refused", ["ffmpeg"], "x") == "Connection refused"
