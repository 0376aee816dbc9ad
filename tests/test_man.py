"""The man pages in man/: generated from the Typer app, never drifting, rendering cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamalchemy.settings import _KNOWN

ROOT = Path(__file__).resolve().parent.parent
MAN_DIR = ROOT / "man"


def generate(out: Path) -> dict[str, str]:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_man.py"), "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return {p.name: p.read_text() for p in sorted(out.glob("*.1"))}


def test_committed_pages_match_the_cli(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    committed = {p.name: p.read_text() for p in sorted(MAN_DIR.glob("*.1"))}
    hint = "man/ is out of date: run `python scripts/gen_man.py` and commit man/"
    assert sorted(committed) == sorted(fresh), hint
    for name, content in fresh.items():
        assert committed[name] == content, f"{name}: {hint}"


def test_a_page_per_command_and_no_date(tmp_path: Path) -> None:
    pages = generate(tmp_path)
    for name in (
        "streamalchemy.1",
        "streamalchemy-start.1",
        "streamalchemy-daemon-run.1",
        "streamalchemy-service-install.1",
    ):
        assert name in pages
    # The same version gives the same bytes: the date field stays empty.
    assert pages["streamalchemy.1"].splitlines()[1].startswith('.TH STREAMALCHEMY 1 "" ')
    assert generate(tmp_path / "again") == pages


def test_main_page_names_every_setting() -> None:
    page = (MAN_DIR / "streamalchemy.1").read_text()
    for key, (var, _parse) in _KNOWN.items():
        assert var in page and key in page, var
    assert "STREAMALCHEMY_HOME" in page


@pytest.mark.skipif(
    shutil.which("man") is None or shutil.which("groff") is None, reason="needs man-db and groff"
)
@pytest.mark.parametrize("page", sorted(p.name for p in MAN_DIR.glob("*.1")))
def test_page_renders_without_warnings(page: str) -> None:
    proc = subprocess.run(
        ["man", "--warnings", "-l", str(MAN_DIR / page)],
        env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C", "MAN_KEEP_FORMATTING": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "NAME" in proc.stdout and "SYNOPSIS" in proc.stdout
