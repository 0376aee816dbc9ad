"""``apply``, ``export`` and ``daemon run --apply`` against real daemons and real FFmpeg."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import Daemon, end_daemon_of, wait_for
from streamalchemy.apply.declarative import owner

pytestmark = pytest.mark.e2e

CHEAP = 'testsrc = true\nresolution = 480\nfps = 5\noutput = "null"\n'


def cli_in(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMALCHEMY_HOME": str(home), "STREAMALCHEMY_AUTOSTART": "0"}
    return subprocess.run(
        [sys.executable, "-m", "streamalchemy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def apply_json(home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = cli_in(home, "apply", *args, "--json")
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def actions(doc: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["action"] for s in doc["plan"]}


def running(home: Path) -> dict[str, tuple[int, float]]:
    """name -> (pid, saved_at) of the streams that run, each pid a live FFmpeg."""
    proc = cli_in(home, "list", "--json")
    streams = json.loads(proc.stdout)["streams"]
    return {
        s["name"]: (s["pid"], s["saved_at"])
        for s in streams
        if s["pid"] is not None and psutil.pid_exists(s["pid"])
    }


@pytest.fixture
def homes() -> Iterator[list[Path]]:
    made: list[Path] = []

    def make() -> Path:
        home = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))
        made.append(home)
        return home

    yield [make() for _ in range(4)]
    for home in made:
        end_daemon_of(home)
        shutil.rmtree(home, ignore_errors=True)


def launch(home: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Daemon:
    monkeypatch.setenv("STREAMALCHEMY_HOME", str(home))
    return Daemon(home, *args)


def test_apply_is_idempotent_replaces_only_changes_and_prunes(
    tmp_home: Path, daemon: Daemon
) -> None:
    f = tmp_home / "s.toml"
    f.write_text("".join(f"[streams.{n}]\n{CHEAP}" for n in ("a", "b", "c")))
    code, doc = apply_json(tmp_home, "-f", str(f), "--dry-run")
    assert code == 0 and doc["dry_run"] and set(actions(doc).values()) == {"create"}
    assert {s["result"] for s in doc["plan"]} == {"planned"} and running(tmp_home) == {}

    code, doc = apply_json(tmp_home, "-f", str(f))
    assert (code, doc["success"], actions(doc)) == (0, True, dict.fromkeys("abc", "create"))
    first = running(tmp_home)
    assert set(first) == {"a", "b", "c"}

    # Same streams, written differently: nothing changes, nothing restarts.
    f.write_text(
        "".join(f"[streams.{n}]\n{CHEAP}" for n in ("a", "b"))
        + '[streams.c]\ntestsrc = true\nresolution = "480"\nfps = 5\noutput = "null"\n'
        + 'duration = "0"\n'
    )
    code, doc = apply_json(tmp_home, "-f", str(f))
    assert code == 0 and set(actions(doc).values()) == {"unchanged"}
    assert running(tmp_home) == first

    # One key of one stream: only that stream is replaced.
    f.write_text(f.read_text().replace("fps = 5", "fps = 6", 1))
    human = cli_in(tmp_home, "apply", "-f", str(f))
    assert human.returncode == 0 and "fps: 5 -> 6" in human.stdout
    now = running(tmp_home)
    assert now["a"][0] != first["a"][0] and {n: now[n] for n in "bc"} == {n: first[n] for n in "bc"}

    # A stream started by hand is left alone without --prune, stopped with it.
    assert cli_in(tmp_home, "start", "d", "--testsrc", "--resolution", "480", "--fps", "5",
                  "--output", "null").returncode == 0  # fmt: skip
    f.write_text("".join(f"[streams.{n}]\n{CHEAP}" for n in ("a", "b")))
    code, doc = apply_json(tmp_home, "-f", str(f), "--prune", "--dry-run")
    assert actions(doc) == {"a": "update", "b": "unchanged", "c": "delete", "d": "delete"}
    assert set(running(tmp_home)) == {"a", "b", "c", "d"}
    code, doc = apply_json(tmp_home, "-f", str(f), "--prune")
    assert code == 0 and set(running(tmp_home)) == {"a", "b"}
    saved = json.loads(cli_in(tmp_home, "saved", "--json").stdout)["streams"]
    assert set(saved) == {"a", "b"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[streams.a\ntestsrc = true\n", "line 1"),
        ("[streams.a]\ntestsrc = true\ncolour = 'red'\n", "line 3: stream 'a', key 'colour'"),
        ("[streams.a]\ntestsrc = true\nresolution = 481\n", "stream 'a', key 'resolution'"),
        ("[streams.a]\ntestsrc = true\nfile = '/x.mp4'\n", "stream 'a', key 'file'"),
    ],
)
def test_an_invalid_file_changes_nothing(tmp_home: Path, text: str, needle: str) -> None:
    f = tmp_home / "bad.toml"
    f.write_text(text)
    proc = cli_in(tmp_home, "apply", "-f", str(f))
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert needle in line
    assert not (tmp_home / "streamalchemy.sock").exists()  # the daemon was not even asked


def test_three_shards_run_each_stream_once_and_a_fourth_takes_what_it_wins(
    homes: list[Path], sample_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"cam{i:02d}" for i in range(12)]
    f = homes[0] / "fleet.toml"
    f.write_text(
        "".join(
            f'[streams.{n}]\nfile = "{sample_video}"\ncodec = "copy"\noutput = "null"\n'
            for n in names
        )
    )
    daemons = [launch(h, monkeypatch) for h in homes]
    try:
        for i in range(3):
            code, doc = apply_json(homes[i], "-f", str(f), "--shard", f"{i}/3")
            assert code == 0, doc
        where = collections.defaultdict(list)
        for i in range(3):
            for name in running(homes[i]):
                where[name].append(i)
        assert where == {n: [owner(n, 3)] for n in names}

        for i in range(4):
            code, doc = apply_json(homes[i], "-f", str(f), "--shard", f"{i}/4", "--prune")
            assert code == 0, doc
        where = collections.defaultdict(list)
        for i in range(4):
            for name in running(homes[i]):
                where[name].append(i)
        assert where == {n: [owner(n, 4)] for n in names}
        moved = {n for n in names if owner(n, 3) != owner(n, 4)}
        assert moved == {n for n in names if owner(n, 4) == 3} and moved
    finally:
        for d in daemons:
            d.stop()


def test_export_round_trips(tmp_home: Path, daemon: Daemon, sample_video: Path) -> None:
    for args in (
        ("a", "--testsrc", "--resolution", "480", "--fps", "5", "--output", "null"),
        ("b", "--file", str(sample_video), "--codec", "copy", "--output", "null",
         "--duration", "1h30m", "--priority", "3"),
    ):  # fmt: skip
        assert cli_in(tmp_home, "start", *args).returncode == 0
    before = running(tmp_home)
    exported = cli_in(tmp_home, "export", "-o", str(tmp_home / "back.toml"))
    assert exported.returncode == 0
    code, doc = apply_json(tmp_home, "-f", str(tmp_home / "back.toml"), "--prune")
    assert code == 0 and actions(doc) == {"a": "unchanged", "b": "unchanged"}
    assert running(tmp_home) == before
    manifests = tmp_home / "k.yaml"
    proc = cli_in(
        tmp_home, "export", "--format", "kubernetes", "--shards", "3", "-o", str(manifests)
    )
    assert proc.returncode == 0
    validate = Path(sys.executable).with_name("kubernetes-validate")
    done = subprocess.run(
        [str(validate), "--strict", str(manifests)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.count("passed") == 4, done.stdout


def test_daemon_run_apply_follows_a_configmap_swap(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cm = tmp_home / "cm"
    cm.mkdir()

    def publish(version: str, names: str) -> None:
        (cm / version).mkdir()
        (cm / version / "streams.toml").write_text(
            "".join(f"[streams.{n}]\n{CHEAP}" for n in names)
        )
        link = cm / "..data_tmp"
        link.symlink_to(version)
        link.rename(cm / "..data")  # an atomic swap, as the kubelet makes it

    publish("..2026_1", "ab")
    (cm / "streams.toml").symlink_to("..data/streams.toml")
    d = launch(tmp_home, monkeypatch, "--apply", str(cm / "streams.toml"))
    try:
        wait_for(lambda: set(running(tmp_home)) == {"a", "b"}, 20, "the launch apply")
        assert cli_in(tmp_home, "start", "hand", "--testsrc", "--resolution", "480",
                      "--fps", "5", "--output", "null").returncode == 0  # fmt: skip
        kept = running(tmp_home)["a"]
        publish("..2026_2", "ac")
        t0 = time.monotonic()
        wait_for(lambda: set(running(tmp_home)) == {"a", "c", "hand"}, 15, "the swap's apply")
        assert time.monotonic() - t0 < 5 + 3  # within 5 s, plus c's start confirmation
        assert running(tmp_home)["a"] == kept
    finally:
        d.stop()


def test_daemon_run_shard_auto_without_shards_is_one_clear_line(tmp_home: Path) -> None:
    f = tmp_home / "s.toml"
    f.write_text(f"[streams.a]\n{CHEAP}")
    env = {k: v for k, v in os.environ.items() if k != "STREAMALCHEMY_SHARDS"}
    proc = subprocess.run(
        [sys.executable, "-m", "streamalchemy", "daemon", "run", "--apply", str(f),
         "--shard", "auto"],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "STREAMALCHEMY_SHARDS" in proc.stderr or "host name" in proc.stderr


def test_daemon_run_apply_with_an_invalid_file_restores_and_waits(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_home / "s.toml"
    f.write_text("[streams.a]\ntestsrc = true\nresolution = 481\n")
    assert cli_in(tmp_home, "daemon", "run", "--apply", str(tmp_home / "nope.toml")).returncode == 2
    log = tmp_home / "logs" / "daemon.log"
    d = launch(tmp_home, monkeypatch, "--apply", str(f))
    try:
        wait_for(lambda: "stream 'a', key 'resolution'" in log.read_text(), 10, "the error")
        f.write_text(f"[streams.a]\n{CHEAP}")
        wait_for(lambda: set(running(tmp_home)) == {"a"}, 15, "the fixed file's apply")
    finally:
        d.stop()
