"""Encoder detection: parsing real listings, selection, the probe cache, and this machine.

The only fakes are device presence (``fake_devices_*``) and a stand-in ffmpeg
script that answers ``-encoders`` from a listing and counts its runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import FFMPEG
from streamalchemy import encoders
from streamalchemy.core.spec import spec_from_request
from streamalchemy.encoders import Encoder, choose, detect, parse_encoders, report
from streamalchemy.errors import EncoderUnavailable, OperationFailed

DATA = Path(__file__).parent / "data"
# Captured verbatim: `ffmpeg -hide_banner -encoders` of Debian 12's FFmpeg 5.1.
DEBIAN = (DATA / "encoders-ffmpeg-5.1-debian12.txt").read_text()
# Trimmed to the video lines that matter, as a macOS (Homebrew, LGPL) build prints them.
MACOS_LGPL = """Encoders:
 V..... = Video
 A..... = Audio
 ------
 V....D h264_videotoolbox    VideoToolbox H.264 Encoder (codec h264)
 V....D hevc_videotoolbox    VideoToolbox H.265 Encoder (codec hevc)
 V.S... mpeg4                MPEG-4 part 2
 V....D prores_videotoolbox  VideoToolbox ProRes Encoder (codec prores)
 A....D aac                  AAC (Advanced Audio Coding)
"""


def fake_devices_none() -> frozenset[str]:
    return frozenset()


def fake_devices_nvidia_and_intel() -> frozenset[str]:
    return frozenset({"nvenc", "vaapi", "qsv"})


def fake_devices_macos() -> frozenset[str]:
    return frozenset({"videotoolbox"})


class StandInFFmpeg:
    """A script named ffmpeg: lists ``listing`` and passes test encodes of ``working`` only."""

    def __init__(self, root: Path, listing: str, working: tuple[str, ...] = ()) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "ffmpeg"
        self.runs_log = root / "runs.log"
        (root / "listing.txt").write_text(listing)
        (root / "working.txt").write_text(" ".join(working))
        self.path.write_text(
            f"#!{sys.executable}\n"
            "import json, pathlib, sys\n"
            "here = pathlib.Path(__file__).parent\n"
            "with open(here / 'runs.log', 'a') as log:\n"
            "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
            "if '-encoders' in sys.argv:\n"
            "    sys.stdout.write((here / 'listing.txt').read_text())\n"
            "    sys.exit(0)\n"
            "encoder = sys.argv[sys.argv.index('-c:v') + 1]\n"
            "sys.exit(0 if encoder in (here / 'working.txt').read_text().split() else 1)\n"
        )
        self.path.chmod(0o755)

    def runs(self) -> list[list[str]]:
        if not self.runs_log.exists():
            return []
        return [json.loads(line) for line in self.runs_log.read_text().splitlines()]


def names(table: dict[str, list[Encoder]], codec: str) -> dict[str, bool]:
    return {e.name: e.available for e in table[codec]}


def test_parse_debian_listing_with_hardware_lines() -> None:
    found = parse_encoders(DEBIAN)
    wanted = {"libx264", "libx265", "mpeg4", "h264_nvenc", "hevc_nvenc", "h264_vaapi"}
    wanted |= {"hevc_vaapi", "h264_qsv", "hevc_qsv"}
    assert wanted <= found
    assert not {"aac", "=", "h264_videotoolbox", "libopus"} & found  # audio and legend lines


def test_parse_macos_listing() -> None:
    assert parse_encoders(MACOS_LGPL) == {
        "h264_videotoolbox",
        "hevc_videotoolbox",
        "mpeg4",
        "prores_videotoolbox",
    }


def test_hardware_is_tested_only_where_its_device_is(tmp_path: Path) -> None:
    ffmpeg = StandInFFmpeg(tmp_path / "bin", DEBIAN, working=("h264_nvenc", "h264_vaapi"))
    table = detect(str(ffmpeg.path), None, devices=fake_devices_nvidia_and_intel)
    assert names(table, "h264") == {
        "libx264": True,
        "h264_nvenc": True,
        "h264_qsv": False,
        "h264_vaapi": True,
    }
    assert names(table, "h265") == {
        "libx265": True,
        "hevc_nvenc": False,
        "hevc_qsv": False,
        "hevc_vaapi": False,
    }
    assert names(table, "mpeg4") == {"mpeg4": True}
    tested = [run[run.index("-c:v") + 1] for run in ffmpeg.runs() if "-c:v" in run]
    assert sorted(tested) == sorted(
        ["h264_nvenc", "hevc_nvenc", "h264_qsv", "hevc_qsv", "h264_vaapi", "hevc_vaapi"]
    )
    vaapi = next(run for run in ffmpeg.runs() if "h264_vaapi" in run)
    assert vaapi[vaapi.index("-vaapi_device") + 1] == "/dev/dri/renderD128"
    assert "format=nv12,hwupload" in vaapi

    assert choose("h264", "auto", table) == "h264_nvenc"
    assert choose("h265", "auto", table) == "libx265"  # every HEVC test encode failed
    assert choose("h264", "vaapi", table) == "h264_vaapi"
    assert choose("h264", "none", table) == "libx264"
    with pytest.raises(EncoderUnavailable, match=r"\(a test encode with h264_qsv failed\)"):
        choose("h264", "qsv", table)


def test_no_device_no_test_encode(tmp_path: Path) -> None:
    ffmpeg = StandInFFmpeg(tmp_path / "bin", DEBIAN, working=("h264_nvenc",))
    table = detect(str(ffmpeg.path), None, devices=fake_devices_none)
    assert len(ffmpeg.runs()) == 1  # just -encoders
    assert choose("h264", "auto", table) == "libx264"
    with pytest.raises(EncoderUnavailable) as caught:
        choose("h264", "nvenc", table)
    assert str(caught.value) == (
        "h264 encoder for nvenc is not available on this machine (no NVIDIA device); "
        "use --hwaccel auto or none"
    )
    with pytest.raises(EncoderUnavailable, match=r"this FFmpeg has no h264_videotoolbox"):
        choose("h264", "videotoolbox", table)
    with pytest.raises(EncoderUnavailable, match=r"mpeg4 encoder for nvenc .*no mpeg4 encoder"):
        choose("mpeg4", "nvenc", table)


def test_an_ffmpeg_without_libx264(tmp_path: Path) -> None:
    ffmpeg = StandInFFmpeg(tmp_path / "bin", MACOS_LGPL, working=("h264_videotoolbox",))
    table = detect(str(ffmpeg.path), None, devices=fake_devices_macos)
    assert choose("h264", "auto", table) == "h264_videotoolbox"
    assert choose("copy", "none", table) == "copy"
    with pytest.raises(EncoderUnavailable, match="this FFmpeg has no libx264"):
        choose("h264", "none", table)
    assert report(table)["auto"] == {"h264": "h264_videotoolbox", "h265": None, "mpeg4": "mpeg4"}
    assert report(table)["encoders"]["h265"] == [
        {"name": "libx265", "type": "software", "available": False},
        {"name": "hevc_videotoolbox", "type": "hardware", "available": False},
    ]


def test_a_second_detect_does_not_run_ffmpeg_even_after_a_restart(tmp_path: Path) -> None:
    ffmpeg = StandInFFmpeg(tmp_path / "bin", DEBIAN, working=("h264_nvenc",))
    cache = tmp_path / "data"
    first = detect(str(ffmpeg.path), cache, devices=fake_devices_nvidia_and_intel)
    probes = len(ffmpeg.runs())
    assert probes == 7  # -encoders and six test encodes
    assert detect(str(ffmpeg.path), cache, devices=fake_devices_nvidia_and_intel) == first
    assert len(ffmpeg.runs()) == probes

    # A new process (a restarted daemon) reads the cache file instead of probing.
    code = (
        "import sys; from pathlib import Path; from streamalchemy.encoders import detect\n"
        "t = detect(sys.argv[1], Path(sys.argv[2]), devices=lambda: frozenset({'nvenc'}))\n"
        "print([e.name for e in t['h264'] if e.available])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(encoders.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code, str(ffmpeg.path), str(cache)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.stdout.strip() == "['libx264', 'h264_nvenc']", done.stderr
    assert len(ffmpeg.runs()) == probes

    # Another FFmpeg binary at the same path (an upgrade) is probed again.
    ffmpeg.path.write_text(ffmpeg.path.read_text() + "# upgraded\n")
    detect(str(ffmpeg.path), cache, devices=fake_devices_none)
    assert len(ffmpeg.runs()) == probes + 1


def test_a_damaged_cache_file_is_probed_over(tmp_path: Path) -> None:
    ffmpeg = StandInFFmpeg(tmp_path / "bin", DEBIAN)
    cache = tmp_path / "data"
    cache.mkdir()
    (cache / encoders.CACHE_FILE).write_text("{not json")
    table = detect(str(ffmpeg.path), cache, devices=fake_devices_none)
    assert names(table, "h264")["libx264"]
    doc = json.loads((cache / encoders.CACHE_FILE).read_text())
    assert "libx264" in doc["ffmpeg"][str(ffmpeg.path)]["encoders"]


def test_missing_ffmpeg_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(OperationFailed, match=r"ffmpeg not found.*STREAMALCHEMY_FFMPEG"):
        detect(str(tmp_path / "no-ffmpeg"), None)


def test_this_machine_lists_libx264_for_h264(tmp_path: Path) -> None:
    table = detect(FFMPEG, tmp_path)
    assert table["h264"][0] == Encoder("libx264", "h264", "software", True)
    doc = report(table)
    assert set(doc) == {"encoders", "auto"}
    assert set(doc["encoders"]) == set(doc["auto"]) == {"h264", "h265", "mpeg4"}
    for listed in doc["encoders"].values():
        for entry in listed:
            assert set(entry) == {"name", "type", "available"}
    if not encoders.present_accelerators():
        assert doc["auto"] == {"h264": "libx264", "h265": "libx265", "mpeg4": "mpeg4"}


def test_a_hanging_ffmpeg_times_out_and_leaves_nothing_running(tmp_path: Path) -> None:
    hang = tmp_path / "ffmpeg"
    hang.write_text("#!/bin/sh\nsleep 31.7\n")  # a child, not exec: the group must go
    hang.chmod(0o755)
    began = time.monotonic()
    with pytest.raises(OperationFailed, match="did not answer within"):
        detect(str(hang), None, timeout=0.5)
    assert time.monotonic() - began < 5
    time.sleep(0.2)
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [])[-1:] == ["31.7"] and p.info["cmdline"][0].endswith("sleep")
    ]
    assert left == []


def test_a_copy_stream_never_waits_for_a_probe() -> None:
    chooser = encoders.Chooser("/nonexistent/ffmpeg", None)
    spec = spec_from_request({"name": "c", "file": "/x.mp4", "codec": "copy"})
    assert chooser(spec) == "copy"
    assert asyncio.run(chooser.choose_async(spec)) == "copy"
