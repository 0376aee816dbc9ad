"""The source's audio through the real daemon and FFmpeg: kept by default, copied with
``--codec copy``, AAC when re-encoding, dropped with ``--audio none``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import FFPROBE, Daemon, cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]


def codecs(path: Path) -> list[str]:
    """``video:h264``, ``audio:aac``, ...: the kinds of stream the file holds."""
    probe = subprocess.run(
        [FFPROBE, "-v", "error", "-show_entries", "stream=codec_type,codec_name",
         "-of", "csv=p=0:nk=1", str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return sorted({":".join(reversed(line.split(","))) for line in probe.stdout.split()})


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), ["audio:aac", "video:h264"]),
        (("--codec", "copy"), ["audio:aac", "video:h264"]),
        (("--audio", "none"), ["video:h264"]),
    ],
)
def test_a_files_audio_is_kept_by_default(
    daemon: Daemon,
    sample_video: Path,
    tmp_path: Path,
    options: tuple[str, ...],
    expected: list[str],
) -> None:
    out = tmp_path / "rec.ts"
    source = ("--file", str(sample_video))
    assert record("rec", source + options, out, 50_000) == expected


def record(name: str, options: tuple[str, ...], out: Path, size: int) -> list[str]:
    """Start NAME into the file ``out``, stop it once it holds ``size`` bytes, probe it."""
    proc = cli("start", name, *options, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: out.exists() and out.stat().st_size > size, 30, "the recording")
    assert cli("stop", name).returncode == 0
    return codecs(out)


def test_a_test_pattern_has_no_audio_unless_asked(daemon: Daemon, tmp_path: Path) -> None:
    small = ("--testsrc", "--resolution", "480", "--fps", "10")
    assert record("plain", small, tmp_path / "plain.ts", 20_000) == ["video:h264"]
    tone = record("tone", (*small, "--audio", "aac"), tmp_path / "tone.ts", 20_000)
    assert tone == ["audio:aac", "video:h264"]
