"""Restore at launch and on demand: the contract's restore rules with real files and FFmpeg."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fakes import pattern_config

from conftest import Daemon, cli, cli_json, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]


def write_state(home: Path, doc: dict[str, object]) -> Path:
    path = home / "active_streams.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return path


def entry(config: dict[str, str], saved_at: float) -> dict[str, object]:
    return {"config": config, "saved_at": saved_at, "status": "active"}


def streams_by_name() -> dict[str, dict[str, object]]:
    code, doc = cli_json("list")
    assert code == 0, doc
    return {s["name"]: s for s in doc["streams"]}


def running(*names: str) -> bool:
    streams = streams_by_name()
    return all(streams.get(n, {}).get("status") == "running" for n in names)


def test_remaining_time_survives_restarts(tmp_home: Path) -> None:
    half_hour_ago = time.time() - 1800
    write_state(tmp_home, {"timed": entry(pattern_config(duration_hours="1"), half_hour_ago)})
    for _ in range(2):
        d = Daemon(tmp_home)
        try:
            wait_for(lambda: running("timed"), 20, "the timed stream")
            remaining = streams_by_name()["timed"]["remaining_seconds"]
            assert isinstance(remaining, float) and 1700 < remaining <= 1800
        finally:
            d.stop()
    saved = json.loads((tmp_home / "active_streams.json").read_text())
    assert saved["timed"]["saved_at"] == pytest.approx(half_hour_ago)


def test_expired_removed_missing_file_skipped_and_kept(tmp_home: Path, sample_video: Path) -> None:
    now = time.time()
    gone = tmp_home / "gone.mp4"
    write_state(
        tmp_home,
        {
            "old": entry(pattern_config(duration_hours="1"), now - 7200),
            "lost": entry(
                {
                    **pattern_config(),
                    "stream_type": "file",
                    "video_file_path": str(gone),
                    "file_source_type": "custom",
                },
                now,
            ),
            "fine": entry(
                {
                    **pattern_config(),
                    "stream_type": "file",
                    "video_file_path": str(sample_video),
                    "video_codec": "copy",
                },
                now,
            ),
        },
    )
    d = Daemon(tmp_home, "--no-restore")
    try:
        code, doc = cli_json("restore", "--dry-run")
        assert code == 0
        assert doc["results"]["old"]["result"] == "skipped"
        assert "expired" in doc["results"]["old"]["reason"]
        assert set(json.loads((tmp_home / "active_streams.json").read_text())) == {
            "old",
            "lost",
            "fine",
        }
        assert streams_by_name() == {}

        code, doc = cli_json("restore")
        assert code == 0, doc
        results = doc["results"]
        assert results["old"]["result"] == "skipped" and "expired" in results["old"]["reason"]
        assert results["lost"]["result"] == "skipped" and str(gone) in results["lost"]["reason"]
        assert results["fine"]["result"] == "restored"
        assert set(json.loads((tmp_home / "active_streams.json").read_text())) == {"lost", "fine"}

        proc = cli("list")
        assert "lost" in proc.stdout and "not running" in proc.stdout
        not_running = cli_json("list")[1]["not_running"]
        assert str(gone) in not_running["lost"]

        code, doc = cli_json("restore")
        assert doc["results"]["fine"] == {"result": "skipped", "reason": "already running"}
    finally:
        d.stop()


def test_restore_with_the_daemon_down(tmp_home: Path) -> None:
    write_state(tmp_home, {"cam": entry(pattern_config(), time.time())})
    before = (tmp_home / "active_streams.json").read_bytes()

    # A dry run plans from the file: it starts no daemon, which would restore for real.
    code, doc = cli_json("restore", "--dry-run")
    assert code == 0, doc
    assert doc["results"]["cam"] == {"result": "restored", "reason": "dry run: would be started"}
    assert cli("daemon", "status").returncode == 3
    assert (tmp_home / "active_streams.json").read_bytes() == before

    # A real one starts the daemon and reports what it did itself.
    code, doc = cli_json("restore")
    assert code == 0, doc
    assert doc["results"]["cam"] == {"result": "restored", "reason": "started"}
    assert running("cam")


def test_original_app_state_file_is_restored(tmp_home: Path, sample_video: Path) -> None:
    write_state(
        tmp_home,
        {
            "legacy": {
                "config": {
                    "video_codec": "h264",
                    "resolution": "480",
                    "target_fps": "10",
                    "audio_enabled": "yes",
                    "audio_codec": "aac",
                    "hardware_accel": "no",
                    "duration_hours": "",
                    "stream_type": "file",
                    "video_file_path": str(sample_video),
                    "video_file": sample_video.name,
                    "file_source_type": "folder",
                    "source_url": None,
                    "encoder_details": {"name": "libx264", "type": "software"},
                    "output": "null",
                },
                "saved_at": time.time() - 60,
                "status": "active",
            }
        },
    )
    d = Daemon(tmp_home)
    try:
        wait_for(lambda: running("legacy"), 20, "the legacy stream")
    finally:
        d.stop()
    kept = json.loads((tmp_home / "active_streams.json").read_text())
    assert kept["legacy"]["config"]["encoder_details"] == {"name": "libx264", "type": "software"}


def test_failing_restore_keeps_stream_saved_and_retrying(tmp_home: Path) -> None:
    from conftest import free_port

    url = f"rtsp://127.0.0.1:{free_port()}/nobody"
    write_state(tmp_home, {"dead": entry(pattern_config(output=url), time.time())})
    d = Daemon(tmp_home, "--no-restore")
    try:
        code, doc = cli_json("restore")
        assert code == 1 and doc["results"]["dead"]["result"] == "failed"
        assert "refused" in doc["results"]["dead"]["reason"]
        wait_for(lambda: streams_by_name()["dead"]["restarts"] >= 1, 20, "a retry")
        assert "dead" in json.loads((tmp_home / "active_streams.json").read_text())
    finally:
        d.stop()


def test_persistence_disabled_saves_and_restores_nothing(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_STREAM_PERSISTENCE", "false")
    d = Daemon(tmp_home)
    try:
        assert (
            cli("start", "p", "--testsrc", "--output", "null", "--resolution", "480").returncode
            == 0
        )
        assert not (tmp_home / "active_streams.json").exists()
        code, doc = cli_json("saved")
        assert (code, doc) == (0, {"success": True, "streams": {}, "enabled": False})
    finally:
        d.stop()


def test_saved_works_with_daemon_down_and_clear_needs_yes(tmp_home: Path) -> None:
    write_state(tmp_home, {"s1": entry(pattern_config(), time.time())})
    code, doc = cli_json("saved")
    assert code == 0 and set(doc["streams"]) == {"s1"} and doc["enabled"] is True
    assert "s1" in cli("saved").stdout

    proc = cli("clear")  # stdin is not a terminal
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert set(cli_json("saved")[1]["streams"]) == {"s1"}

    code, doc = cli_json("clear", "--yes")
    assert (code, doc) == (0, {"success": True, "message": "All persistent streams cleared"})
    assert cli_json("saved")[1]["streams"] == {}
    assert (tmp_home / "active_streams.json.backup.1").exists()
