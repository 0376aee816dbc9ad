"""The output kinds table: every row is reachable from the strings it claims, and drives argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamalchemy.core import outputs
from streamalchemy.core.spec import spec_from_request
from streamalchemy.supervision.ffmpeg import build_argv


def examples(row: outputs.OutputKind, directory: Path) -> list[str]:
    """The output strings of one row: its word, a URL per scheme, or a file path."""
    if row.word is not None:
        return [row.word]
    if row.extension:
        return [
            str(directory / f"rec{row.extension.upper()}"),
            str(directory / f"rec{row.extension}"),
        ]
    return [f"{scheme}://host:9000/live" for scheme in row.schemes]


@pytest.mark.parametrize("row", outputs.OUTPUTS, ids=lambda row: row.kind)
def test_every_row_is_found_from_its_strings_and_accepted_by_start(
    row: outputs.OutputKind, tmp_path: Path
) -> None:
    for output in examples(row, tmp_path):
        assert outputs.kind_of(output) is row
        spec = spec_from_request({"name": "cam", "testsrc": True, "output": output})
        target = spec.target("rtsp://h:8554", tmp_path / "hls")
        argv = build_argv(spec, ffmpeg="ffmpeg", encoder="libx264", target=target)
        assert argv[argv.index("-f", argv.index("-an")) + 1] == row.muxer
        assert outputs.is_path(output) is (row.is_file and output.startswith("/"))


def test_only_files_number_and_only_hls_is_a_directory() -> None:
    assert {r.kind for r in outputs.OUTPUTS if r.is_file} == {
        "ts file",
        "mp4 file",
        "mkv file",
        "flv file",
        "mov file",
    }
    assert [r.kind for r in outputs.OUTPUTS if r.is_hls] == ["hls"]


def test_each_word_scheme_and_extension_names_one_row() -> None:
    keys = [*outputs.WORDS, *outputs.SCHEMES, *outputs.EXTENSIONS]
    assert len(keys) == len(set(keys))


def test_show_names_the_default_output() -> None:
    assert outputs.shown("") == "default RTSP"
    assert outputs.shown("hls") == "hls"
