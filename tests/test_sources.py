"""Source checks before a start, against real files and the real ffprobe."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import FFMPEG, FFPROBE
from streamalchemy.core.spec import StreamSpec, spec_from_request
from streamalchemy.errors import InvalidInput, OperationFailed
from streamalchemy.supervision.sources import check_source


def file_spec(path: Path) -> StreamSpec:
    return spec_from_request({"name": "cam", "file": str(path)})


def test_a_real_video_passes(sample_video: Path) -> None:
    check_source(file_spec(sample_video), FFPROBE)


def test_a_video_whose_name_looks_like_an_option_passes(sample_video: Path, tmp_path: Path) -> None:
    odd = tmp_path / "-i"
    shutil.copy(sample_video, odd)
    check_source(file_spec(odd), FFPROBE)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.mp4"
    with pytest.raises(InvalidInput) as caught:
        check_source(file_spec(missing), FFPROBE)
    assert str(caught.value) == f"source file not found: '{missing}'"


def test_directory_is_not_a_source(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a regular file"):
        check_source(file_spec(tmp_path), FFPROBE)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_fails_the_operation(sample_video: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked.mp4"
    shutil.copy(sample_video, locked)
    locked.chmod(0)
    with pytest.raises(OperationFailed, match="permission denied"):
        check_source(file_spec(locked), FFPROBE)


def test_a_text_file_is_not_a_video(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(InvalidInput, match="is not a playable video: Invalid data found"):
        check_source(file_spec(text), FFPROBE)


def test_audio_only_file_is_not_a_video(sample_video: Path, tmp_path: Path) -> None:
    audio = tmp_path / "tone.m4a"
    subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(sample_video), "-vn", "-c:a", "copy", str(audio)],
        check=True,
        timeout=30,
    )
    with pytest.raises(InvalidInput, match="no video stream"):
        check_source(file_spec(audio), FFPROBE)


def test_missing_ffprobe_says_how_to_install_it(sample_video: Path) -> None:
    with pytest.raises(OperationFailed, match=r"ffprobe not found.*install FFmpeg"):
        check_source(file_spec(sample_video), "/nonexistent/ffprobe")


def test_url_and_testsrc_sources_are_not_probed() -> None:
    dead = spec_from_request({"name": "cam", "url": "rtsp://127.0.0.1:1/none"})
    check_source(dead, "/nonexistent/ffprobe")
    check_source(spec_from_request({"name": "cam", "testsrc": True}), "/nonexistent/ffprobe")
