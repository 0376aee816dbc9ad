"""A home nobody else can plant in: the daemon and the CLI's autostart refuse it, exit 2."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamalchemy import home
from streamalchemy.settings import load_settings

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="acts as nobody: needs root"
)


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(home_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMALCHEMY_HOME": str(home_dir), "STREAMALCHEMY_MEDIAMTX": "off"}
    for var in ("STREAMALCHEMY_SOCKET", "STREAM_PERSISTENCE_FILE", "STREAMALCHEMY_AUTOSTART"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "streamalchemy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_world_writable_home_is_refused_with_the_chmod_that_fixes_it(base: Path) -> None:
    planted = base / "home"
    planted.mkdir()
    os.chmod(planted, 0o1777)
    for args in (["daemon", "run"], ["list"], ["start", "x", "--testsrc"]):
        done = _run(planted, *args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert str(planted) in lines[0]
        assert f"chmod go-w {planted}" in lines[0]
        assert "did not start" not in lines[0]
    assert stat.S_IMODE(os.stat(planted).st_mode) == 0o1777  # refused, not silently changed
    assert sorted(os.listdir(planted)) == []  # nothing created, no daemon ran


def test_group_writable_log_dir_is_refused(base: Path) -> None:
    (base / "logs").mkdir(mode=0o775)
    os.chmod(base / "logs", 0o775)
    why = home.problem(base / "logs", directory=True)
    assert why is not None and f"chmod go-w {base / 'logs'}" in why
    with pytest.raises(home.UnsafeHome) as err:
        home.check(load_settings(env={"STREAMALCHEMY_HOME": str(base)}))
    assert err.value.exit_code == 2


def test_prepare_creates_missing_directories_0700(base: Path) -> None:
    settings = load_settings(env={"STREAMALCHEMY_HOME": str(base / "new")})
    home.prepare(settings)
    for directory in (settings.data_dir, settings.log_dir):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


@needs_root
def test_home_planted_by_another_user_is_refused_with_chown(base: Path) -> None:
    os.chmod(base, 0o1777)
    planted = base / "home"
    subprocess.run([*AS_NOBODY, "mkdir", "-m", "0700", str(planted)], check=True, timeout=10)
    os.chmod(base, 0o755)
    done = _run(planted, "daemon", "run")
    assert done.returncode == 2
    assert f"chown root {planted}" in done.stderr
    assert "owned by nobody" in done.stderr


@needs_root
def test_children_record_planted_by_another_user_is_refused(base: Path) -> None:
    """nobody planted children.json while the home was open; closing the home is not enough."""
    os.chmod(base, 0o1777)
    subprocess.run(
        [*AS_NOBODY, "sh", "-c", f"echo '{{}}' > {base}/children.json"], check=True, timeout=10
    )
    os.chmod(base, 0o700)
    done = _run(base, "daemon", "run")
    assert done.returncode == 2
    assert f"chown root {base / 'children.json'}" in done.stderr


@needs_root
def test_a_pid_file_symlink_planted_by_another_user_is_refused(base: Path) -> None:
    os.chmod(base, 0o1777)
    subprocess.run(
        [*AS_NOBODY, "ln", "-s", "/etc/passwd", f"{base}/daemon.pid"], check=True, timeout=10
    )
    os.chmod(base, 0o700)
    why = home.problem(base / "daemon.pid", directory=False, follow=False)
    assert why is not None and f"chown -h root {base / 'daemon.pid'}" in why


@needs_root
def test_a_state_file_symlink_planted_by_another_user_is_refused(base: Path) -> None:
    os.chmod(base, 0o1777)
    subprocess.run(
        [*AS_NOBODY, "ln", "-s", "/etc/hostname", f"{base}/active_streams.json"],
        check=True,
        timeout=10,
    )
    os.chmod(base, 0o700)
    with pytest.raises(home.UnsafeHome, match="chown -h root"):
        home.check(load_settings(env={"STREAMALCHEMY_HOME": str(base)}))


def test_bind_private_never_touches_the_process_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_umask(mask: int) -> int:
        raise AssertionError("the umask is the whole process's: other threads create files")

    monkeypatch.setattr(os, "umask", no_umask)
    path = tmp_path / "s.sock"
    sock = home.bind_private(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)
    finally:
        sock.close()
