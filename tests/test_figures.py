"""Figures right after a start, through the real daemon and FFmpeg: absent until FFmpeg
has reported enough to compute them, then plausible; an HLS output has a bitrate."""

from __future__ import annotations

import pytest

from conftest import Daemon, cli_json, wait_for

pytestmark = pytest.mark.e2e

SMALL = ("--testsrc", "--resolution", "480", "--fps", "10")


def plausible(stream: dict[str, object]) -> bool:
    """A 480p test pattern at 10 fps: some hundred kb/s, in real time."""
    kbps, speed, fps = stream["bitrate_kbps"], stream["speed"], stream["fps"]
    return (
        (kbps is None or 20 < kbps < 5_000)  # type: ignore[operator]
        and (speed is None or 0.5 < speed < 2)  # type: ignore[operator]
        and (fps is None or 3 < fps < 20)  # type: ignore[operator]
    )


def test_no_absurd_figure_in_the_first_seconds_and_hls_has_a_bitrate(daemon: Daemon) -> None:
    code, doc = cli_json("start", "null-out", *SMALL, "--output", "null")
    assert code == 0 and plausible(doc["stream"]), doc
    code, doc = cli_json("start", "hls-out", *SMALL, "--output", "hls")
    assert code == 0 and plausible(doc["stream"]), doc
    seen: dict[str, set[str]] = {"null-out": set(), "hls-out": set()}

    def all_known() -> bool:
        code, listing = cli_json("list")
        assert code == 0
        for s in listing["streams"]:
            assert plausible(s), s
            seen[s["name"]] |= {k for k in ("bitrate_kbps", "speed", "fps") if s[k] is not None}
        return all(len(known) == 3 for known in seen.values())

    wait_for(all_known, 30, "every figure of both streams", interval=0.3)
