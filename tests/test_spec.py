"""One validation for requests and saved entries: defaults, refusals, the original app's format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamalchemy.core.saved import spec_from_entry, to_config
from streamalchemy.core.spec import (
    StreamSpec,
    mask_credentials,
    spec_from_request,
    validate_name,
)
from streamalchemy.errors import InvalidInput


def request(**body: Any) -> StreamSpec:
    return spec_from_request({"name": "cam", **body})


def refused(body: dict[str, Any]) -> str:
    with pytest.raises(InvalidInput) as caught:
        spec_from_request({"name": "cam", **body})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_follow_the_contract() -> None:
    spec = request(file="/v/a.mp4")
    assert spec == StreamSpec(
        name="cam",
        source_type="file",
        source="/v/a.mp4",
        codec="h264",
        resolution=None,
        fps=None,
        audio="auto",
        hwaccel="none",
        duration=0.0,
        output="",
        restart="on-failure",
        priority=0,
    )
    nulls = dict.fromkeys(["codec", "resolution", "fps", "audio", "hwaccel", "duration"], None)
    assert request(file="/v/a.mp4", output=None, replace=True, **nulls) == spec


def test_every_option_is_read() -> None:
    spec = request(
        url="rtsp://cam.local/s",
        codec="h265",
        resolution="720",
        fps=30,
        audio="pcm_alaw",
        hwaccel="auto",
        duration="1h30m",
        output="srt://relay:9000",
        restart="always",
        priority=-3,
    )
    assert (spec.source_type, spec.source) == ("rtsp", "rtsp://cam.local/s")
    assert (spec.codec, spec.resolution, spec.fps) == ("h265", 720, 30)
    assert (spec.audio, spec.hwaccel, spec.duration) == ("pcm_alaw", "auto", 5400.0)
    assert (spec.output, spec.restart, spec.priority) == ("srt://relay:9000", "always", -3)
    assert request(testsrc=True, duration=1.5).duration == 5400.0
    assert request(testsrc=True, resolution=2160).resolution == 2160


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"codec": "h266"}, ["codec", "'h266'", "h264, h265, mpeg4 or copy"]),
        ({"resolution": 1000}, ["resolution", "1000", "480, 720, 1080, 1440 or 2160"]),
        ({"resolution": "4k"}, ["resolution", "'4k'", "2160"]),
        ({"fps": 0}, ["fps", "0", "1 to 120"]),
        ({"fps": 121}, ["fps", "121", "1 to 120"]),
        ({"fps": 29.97}, ["fps", "29.97", "whole number"]),
        ({"fps": True}, ["fps", "True"]),
        ({"audio": "mp3"}, ["audio", "'mp3'", "aac, pcm_alaw or none"]),
        ({"hwaccel": "cuda"}, ["hwaccel", "'cuda'", "nvenc"]),
        ({"duration": "forever"}, ["duration", "'forever'", "90m"]),
        ({"duration": [1]}, ["duration", "[1]"]),
        ({"restart": "sometimes"}, ["restart", "'sometimes'", "on-failure, always or never"]),
        ({"priority": "high"}, ["priority", "'high'", "whole number"]),
        ({"priority": 1.5}, ["priority", "1.5"]),
        ({"output": "ftp://h/x"}, ["output", "'ftp://h/x'", "rtsp://"]),
        ({"output": "relative.ts"}, ["output", "'relative.ts'", "absolute file path"]),
        ({"output": "/tmp/x.avi"}, ["output", "'/tmp/x.avi'", ".ts, .mp4, .mkv, .flv or .mov"]),
        ({"output": "/no/such/dir/x.ts"}, ["output", "'/no/such/dir'", "does not exist"]),
        ({"output": 5}, ["output", "5"]),
        ({"colour": "red"}, ["unknown field", "'colour'"]),
    ],
)
def test_bad_values_are_refused_naming_field_value_and_choices(
    body: dict[str, Any], named: list[str]
) -> None:
    message = refused({"testsrc": True, **body})
    for part in named:
        assert part in message


@pytest.mark.parametrize(
    ("sources", "named"),
    [
        ({}, "got none"),
        ({"file": "/v/a.mp4", "url": "rtsp://h/x"}, "got file, url"),
        ({"file": "/v/a.mp4", "testsrc": True}, "got file, testsrc"),
        ({"testsrc": "yes"}, "invalid testsrc 'yes'"),
        ({"file": "v/a.mp4"}, "invalid file 'v/a.mp4': use an absolute file path"),
        ({"file": 3}, "invalid file 3"),
        ({"file": "/v/a\0.mp4"}, "NUL"),
        ({"url": "ftp://h/x"}, "invalid url 'ftp://h/x': use a URL starting with rtsp://"),
        ({"url": "rtsp://"}, "invalid url 'rtsp://'"),
        ({"url": "/v/a.mp4"}, "invalid url '/v/a.mp4'"),
        ({"url": "rtsp://u:secret@h/x\n-i /etc/passwd"}, "control characters"),
    ],
)
def test_exactly_one_valid_source(sources: dict[str, Any], named: str) -> None:
    message = refused(sources)
    assert named in message
    assert "secret" not in message


def test_file_sources_may_hold_anything_but_nul() -> None:
    for name in ('/v/it\'s "q".mp4', "/v/$(touch x)`id`;.mp4", "/v/new\nline.mp4", "/-i", "/ü视"):
        assert request(file=name).source == name


def test_every_url_scheme_of_the_allowlist_is_a_source() -> None:
    for scheme in ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp"):
        assert request(url=f"{scheme}://h:1/x").source_type == "rtsp"


def test_outputs(tmp_path: Path) -> None:
    for output in ("null", "hls", "rtsp://h/x", "rtmps://h/x", "srt://h:1", "udp://h:1", ""):
        assert request(testsrc=True, output=output).output == output
    for ext in (".ts", ".mp4", ".mkv", ".flv", ".MOV"):
        path = str(tmp_path / f"$(x) '{ext}'{ext}")
        assert request(testsrc=True, output=path).output == path


def test_the_output_cannot_overwrite_the_source(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.touch()
    (tmp_path / "link.mp4").symlink_to(video)
    for output in (video, tmp_path / "link.mp4", tmp_path / "." / "v.mp4"):
        message = refused({"file": str(video), "output": str(output)})
        assert "it is the source file" in message


def test_copy_refuses_explicit_encoding_options_and_ignores_their_defaults() -> None:
    spec = request(file="/v/a.mp4", codec="copy", resolution=None, fps=None, hwaccel=None)
    assert (spec.resolution, spec.fps, spec.hwaccel) == (None, None, "none")
    for option, value in (("resolution", 720), ("fps", 30), ("hwaccel", "none")):
        message = refused({"file": "/v/a.mp4", "codec": "copy", option: value})
        assert message.startswith(f"{option} {value!r} cannot be used with codec copy")
    assert "testsrc" in refused({"testsrc": True, "codec": "copy"})


def test_container_limits_are_checked_before_ffmpeg_starts(tmp_path: Path) -> None:
    assert "FLV" in refused({"testsrc": True, "codec": "h265", "output": "rtmp://h/live"})
    assert "FLV" in refused({"testsrc": True, "codec": "mpeg4", "output": str(tmp_path / "a.flv")})
    assert "MP4" in refused(
        {"testsrc": True, "audio": "pcm_alaw", "output": str(tmp_path / "a.mp4")}
    )
    assert request(testsrc=True, audio="pcm_alaw", output=str(tmp_path / "a.mkv"))


@pytest.mark.parametrize("name", ["", "a b", "a/b", "../x", "ü", "x" * 65, None, 5, "a\n"])
def test_bad_names(name: object) -> None:
    with pytest.raises(InvalidInput, match="invalid stream name"):
        validate_name(name)
    assert validate_name("Cam_1-a" + "x" * 57) == "Cam_1-a" + "x" * 57


CONTRACT_ENTRY = {
    "config": {
        "video_codec": "h264",
        "resolution": "1080",
        "target_fps": "30",
        "audio_enabled": "yes",
        "audio_codec": "aac",
        "hardware_accel": "no",
        "duration_hours": "2",
        "stream_type": "file",
        "video_file_path": "/path/to/video.mp4",
        "file_source_type": "custom",
    },
    "saved_at": 1703123456.789,
    "status": "active",
}

# As the original StreamAlchemy wrote it (its data/active_streams.json).
ORIGINAL_ENTRY = {
    "config": {
        "video_codec": "h264",
        "resolution": "1080",
        "target_fps": "15",
        "audio_enabled": "no",
        "audio_codec": "aac",
        "hardware_accel": "yes",
        "duration_hours": "6",
        "encoder_details": {"name": "libx264", "type": "software"},
        "stream_type": "file",
        "source_url": None,
        "video_file": "Video_with_Faces_Ready.mp4",
        "file_source_type": "folder",
        "video_file_path": "/videos/Video_with_Faces_Ready.mp4",
    },
    "saved_at": 1759911025.042391,
    "status": "active",
}


def test_the_contracts_example_entry() -> None:
    spec = spec_from_entry("cam1", CONTRACT_ENTRY)
    assert spec == StreamSpec(
        name="cam1",
        source_type="file",
        source="/path/to/video.mp4",
        resolution=1080,
        fps=30,
        audio="aac",
        duration=7200.0,
    )


def test_an_original_app_entry_with_its_extra_keys() -> None:
    spec = spec_from_entry("Video_with_Faces_Ready", ORIGINAL_ENTRY)
    assert (spec.source, spec.audio, spec.hwaccel) == (
        "/videos/Video_with_Faces_Ready.mp4",
        "none",
        "auto",
    )
    assert spec.duration == 6 * 3600


def test_entry_variants() -> None:
    def entry(**config: Any) -> StreamSpec:
        base = {"stream_type": "testsrc", "duration_hours": ""}
        return spec_from_entry("e", {"config": {**base, **config}, "saved_at": 1.0})

    assert entry().duration == 0
    assert entry(hardware_accel="nvenc").hwaccel == "nvenc"
    assert entry(audio_enabled="yes", audio_codec="").audio == "aac"
    assert entry(audio_enabled="yes", audio_codec="pcm_alaw").audio == "pcm_alaw"
    # auto keeps the source's audio; an entry that does not say keeps it too.
    assert entry(audio_enabled="auto").audio == entry().audio == "auto"
    assert entry(audio_enabled="no", audio_codec="aac").audio == "none"
    # Blank (or absent) size and rate keep the source's; "source" is our own word for it.
    assert entry(target_fps="", resolution="").fps is None
    assert entry(target_fps="source", resolution="source").resolution is None
    assert (entry(target_fps="30", resolution="720").fps, entry(resolution="720").resolution) == (
        30,
        720,
    )
    assert entry(priority="7", restart="never", output="null").priority == 7
    url = entry(stream_type="rtsp", source_url="rtsps://u:p@cam/s")
    assert (url.source_type, url.source) == ("rtsp", "rtsps://u:p@cam/s")
    moved = {"stream_type": "file", "video_file_path": None, "video_file": "/old/v.mp4"}
    assert entry(**moved).source == "/old/v.mp4"


def test_a_copy_entry_keeps_and_ignores_resolution_fps_and_hwaccel() -> None:
    config = {**CONTRACT_ENTRY["config"], "video_codec": "copy", "hardware_accel": "yes"}  # type: ignore[dict-item]
    spec = spec_from_entry("c", {"config": config})
    assert (spec.codec, spec.resolution, spec.fps, spec.hwaccel) == ("copy", None, None, "none")


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"stream_type": "webcam"}, "invalid stream_type 'webcam'"),
        ({"target_fps": "0"}, "invalid target_fps '0'"),
        ({"video_codec": "vp9"}, "invalid video_codec 'vp9'"),
        ({"hardware_accel": "maybe"}, "invalid hardware_accel 'maybe'"),
        ({"audio_enabled": "perhaps"}, "invalid audio_enabled 'perhaps'"),
        ({"duration_hours": "soon"}, "invalid duration 'soon'"),
        ({"video_file_path": "video.mp4"}, "invalid video_file_path 'video.mp4'"),
        ({"video_file_path": None}, "invalid video_file_path None"),
        ({"resolution": "999"}, "invalid resolution '999'"),
    ],
)
def test_bad_entries_are_refused_by_the_same_rules(config: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        spec_from_entry("cam1", {"config": {**CONTRACT_ENTRY["config"], **config}})  # type: ignore[dict-item]
    assert named in str(caught.value)
    with pytest.raises(InvalidInput, match="invalid stream name"):
        spec_from_entry("bad name", CONTRACT_ENTRY)
    with pytest.raises(InvalidInput, match="no config"):
        spec_from_entry("cam1", {"saved_at": 1.0})


@pytest.mark.parametrize(
    "body",
    [
        {"testsrc": True},
        {"testsrc": True, "resolution": "source", "fps": "source"},
        {"file": "/v/a.mp4", "resolution": "720", "fps": "source"},
        {"file": "/v/a b.mp4", "codec": "copy", "audio": "aac", "output": "hls"},
        {"url": "rtsp://u:p@h/x", "codec": "h265", "hwaccel": "auto", "duration": "1h30m15s"},
        {"url": "srt://h:1", "codec": "mpeg4", "fps": 120, "resolution": 480, "priority": -2},
        {"testsrc": True, "hwaccel": "vaapi", "restart": "never", "output": "udp://h:1"},
        {"file": "/v/x.mp4", "duration": 0.25, "audio": "pcm_alaw", "output": "null"},
    ],
)
def test_to_config_round_trips(body: dict[str, Any]) -> None:
    spec = request(**body)
    config = to_config(spec)
    assert all(isinstance(v, str) for v in config.values())
    assert spec_from_entry("cam", {"config": config, "saved_at": 1.0, "status": "active"}) == spec


def test_to_config_writes_the_original_format() -> None:
    assert to_config(request(file="/v/a.mp4", audio="aac", hwaccel="auto", duration=2)) == {
        "video_codec": "h264",
        "resolution": "source",
        "target_fps": "source",
        "audio_enabled": "yes",
        "audio_codec": "aac",
        "hardware_accel": "yes",
        "duration_hours": "2",
        "stream_type": "file",
        "video_file_path": "/v/a.mp4",
        "file_source_type": "custom",
        "output": "",
        "restart": "on-failure",
        "priority": "0",
    }
    copy = to_config(request(url="rtsp://h/x", codec="copy"))
    assert (copy["resolution"], copy["target_fps"], copy["source_url"]) == ("", "", "rtsp://h/x")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("rtsp://user:pass@host/x", "rtsp://***:***@host/x"),
        ("rtsp://admin@cam:554/s", "rtsp://***@cam:554/s"),
        ("rtsp://u:p@ss@h/x", "rtsp://***:***@h/x"),
        ("rtsp://:pw@h/x", "rtsp://***:***@h/x"),
        (
            "Input #0, rtsp, from 'rtsp://admin:12345@10.0.0.2:554/ch1':",
            "Input #0, rtsp, from 'rtsp://***:***@10.0.0.2:554/ch1':",
        ),
        ("a rtmp://k:s@h/x and srt://h:1 b", "a rtmp://***:***@h/x and srt://h:1 b"),
        ("http://h:80/a@b", "http://h:80/a@b"),
        ("no url here: user@example.com", "no url here: user@example.com"),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


@given(
    codec=st.sampled_from(["h264", "h265", "mpeg4"]),
    resolution=st.sampled_from([480, 720, 1080, 1440, 2160]),
    fps=st.integers(1, 120),
    audio=st.sampled_from(["aac", "pcm_alaw", "none"]),
    hwaccel=st.sampled_from(["none", "auto", "nvenc", "vaapi", "qsv", "videotoolbox"]),
    seconds=st.integers(0, 366 * 24 * 3600),
    priority=st.integers(-(10**6), 10**6),
)
def test_any_valid_request_round_trips_through_the_state_file(
    codec: str,
    resolution: int,
    fps: int,
    audio: str,
    hwaccel: str,
    seconds: int,
    priority: int,
) -> None:
    spec = request(
        testsrc=True,
        codec=codec,
        resolution=resolution,
        fps=fps,
        audio=audio,
        hwaccel=hwaccel,
        duration=f"{seconds}s",
        priority=priority,
    )
    assert spec.duration == seconds
    assert spec_from_entry("cam", {"config": to_config(spec)}) == spec
