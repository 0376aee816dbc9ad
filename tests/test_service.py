"""The systemd unit: what it says, that systemd accepts it, and the daemon's notifications."""

from __future__ import annotations

import getpass
import inspect
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import cli, cli_json, kill_tree, wait_for
from streamalchemy.deploy import service
from streamalchemy.errors import InvalidInput, OperationFailed
from streamalchemy.supervision.supervisor import Supervisor

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def fields(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key, []).append(value)
    return found


def verify(text: str, flavour: service.Flavour, tmp_path: Path) -> None:
    """``systemd-analyze verify``: exit 0 and not a word about our unit on stderr."""
    assert SYSTEMD_ANALYZE is not None
    unit = tmp_path / "units" / service.UNIT_NAME
    unit.parent.mkdir(exist_ok=True)
    unit.write_text(text)
    env = dict(os.environ)
    args = [SYSTEMD_ANALYZE]
    if flavour == "user":
        runtime = tmp_path / "runtime"  # the user manager wants one, even to verify
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.append("--user")
    proc = subprocess.run(
        [*args, "verify", str(unit)], capture_output=True, text=True, env=env, timeout=60
    )
    ours = [line for line in proc.stderr.splitlines() if "streamalchemy" in line]
    assert proc.returncode == 0 and not ours, proc.stderr


@pytest.fixture
def odd_binary(tmp_path: Path) -> Path:
    """An executable whose path needs quoting and escaping: a space, a %-specifier, a $."""
    path = tmp_path / "dir with $x and %h" / "streamalchemy"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (Debian: systemd)")
@pytest.mark.parametrize("flavour", ["system", "user"])
def test_unit_passes_systemd_analyze_verify(
    flavour: service.Flavour, tmp_path: Path, odd_binary: Path
) -> None:
    environment = {
        "STREAMALCHEMY_HOME": "/srv/streams 100%",
        "STREAMALCHEMY_RTSP_URL": 'rtsp://a"b',
    }
    run_as = getpass.getuser() if flavour == "system" else None
    text = service.render(flavour, [str(odd_binary), "daemon", "run", "$1"], environment, run_as)
    verify(text, flavour, tmp_path)
    # And the unit this installation would write, with its real ExecStart.
    verify(service.build(flavour, {"STREAMALCHEMY_HOME": str(tmp_path)}).text, flavour, tmp_path)


def test_unit_escapes_for_systemd(odd_binary: Path) -> None:
    text = service.render("user", [str(odd_binary), "a$b"], {"STREAMALCHEMY_HOME": "/x 5%"})
    [exec_start] = fields(text)["ExecStart"]
    # %-specifiers everywhere, $VARIABLES in arguments only (not in the executable path).
    assert exec_start == f'"{str(odd_binary).replace("%", "%%")}" a$$b'
    assert fields(text)["Environment"] == ['"STREAMALCHEMY_HOME=/x 5%%"']
    with pytest.raises(InvalidInput):
        service.render("user", ["/bin/true"], {"STREAMALCHEMY_HOME": "a\nExecStartPre=/x"})


def test_system_unit_shape() -> None:
    env = {
        "SUDO_USER": "alice",
        "HOME": "/root",
        "PATH": "/usr/bin",
        "STREAM_PERSISTENCE_FILE": "/srv/state.json",
        "ENABLE_STREAM_PERSISTENCE": "true",
        "STREAMALCHEMY_RTSP_URL": "rtsp://127.0.0.1:8554",
    }
    unit = service.build("system", env)
    assert unit.path == Path("/etc/systemd/system/streamalchemy.service")
    f = fields(unit.text)
    assert f["Type"] == ["notify"] and f["NotifyAccess"] == ["main"]
    assert f["Restart"] == ["on-failure"] and f["KillMode"] == ["process"]
    grace = inspect.signature(Supervisor).parameters["grace"].default
    assert int(f["TimeoutStopSec"][0]) > grace
    assert f["ExecStart"][0].endswith(" daemon run")
    assert f["LimitNOFILE"] == ["65536"]
    assert f["User"] == ["alice"] and f["WantedBy"] == ["multi-user.target"]
    assert f["After"] == ["network-online.target"]
    # Only the daemon's settings travel into the unit, and a home systemd creates.
    assert {e.strip('"').split("=")[0] for e in f["Environment"]} - {"PYTHONPATH"} == {
        "STREAM_PERSISTENCE_FILE",
        "ENABLE_STREAM_PERSISTENCE",
        "STREAMALCHEMY_RTSP_URL",
        "STREAMALCHEMY_HOME",
    }
    assert '"STREAMALCHEMY_HOME=/var/lib/streamalchemy"' in f["Environment"]
    assert f["StateDirectory"] == ["streamalchemy"] and f["StateDirectoryMode"] == ["0700"]
    assert any("STREAMALCHEMY_HOME=/var/lib/streamalchemy" in n for n in unit.notes)


def test_reload_restarts_the_daemon_in_place_with_the_same_installation() -> None:
    f = fields(service.build("user", {"STREAMALCHEMY_HOME": "/h"}).text)
    (start,), (reload,) = f["ExecStart"], f["ExecReload"]
    assert start.endswith(" daemon run") and reload.endswith(" daemon restart")
    assert start.removesuffix(" run") == reload.removesuffix(" restart")


def test_user_unit_shape(tmp_path: Path) -> None:
    unit = service.build("user", {"XDG_CONFIG_HOME": str(tmp_path), "STREAMALCHEMY_HOME": "/h"})
    assert unit.path == tmp_path / "systemd" / "user" / "streamalchemy.service"
    f = fields(unit.text)
    assert f["WantedBy"] == ["default.target"]
    assert "User" not in f and "After" not in f and "StateDirectory" not in f
    assert '"STREAMALCHEMY_HOME=/h"' in f["Environment"]
    assert any("enable-linger" in n for n in unit.notes)


def test_exec_start_runs_this_installation() -> None:
    command, extra = service.exec_start()
    assert command[-2:] == ["daemon", "run"]
    env = {**os.environ, **extra, "STREAMALCHEMY_HOME": "/nonexistent"}
    proc = subprocess.run(
        [*command[:-2], "--version"], capture_output=True, text=True, env=env, timeout=60, cwd="/"
    )
    assert proc.returncode == 0 and proc.stdout.startswith("streamalchemy "), proc.stderr


class Recorder:
    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> int:
        self.calls.append(" ".join(argv))
        return 1 if self.fail and self.fail in self.calls[-1] else 0


def test_install_enables_and_starts_through_systemctl(tmp_path: Path) -> None:
    unit = service.build("user", {"XDG_CONFIG_HOME": str(tmp_path)})
    run = Recorder()
    result = service.install(unit, use_systemctl=True, daemon_running=False, run=run)
    assert unit.path.read_text() == unit.text
    assert run.calls == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now streamalchemy.service",
    ]
    assert result["ran"] is True and result["commands"] == run.calls


def test_install_next_to_a_running_daemon_only_enables(tmp_path: Path) -> None:
    unit = service.build("system", {})
    unit = service.Unit(unit.flavour, tmp_path / "streamalchemy.service", unit.text)
    run = Recorder()
    result = service.install(unit, use_systemctl=True, daemon_running=True, run=run)
    assert run.calls == ["systemctl daemon-reload", "systemctl enable streamalchemy.service"]
    assert any("streamalchemy daemon stop && systemctl start" in n for n in result["notes"])


def test_install_without_systemctl_prints_commands(tmp_path: Path) -> None:
    unit = service.build("user", {"XDG_CONFIG_HOME": str(tmp_path)})
    run = Recorder()
    result = service.install(unit, use_systemctl=False, daemon_running=False, run=run)
    assert run.calls == [] and result["ran"] is False
    assert result["commands"][-1] == "systemctl --user enable --now streamalchemy.service"


def test_failing_systemctl_is_an_operation_failure(tmp_path: Path) -> None:
    unit = service.build("user", {"XDG_CONFIG_HOME": str(tmp_path)})
    with pytest.raises(OperationFailed, match="enable --now"):
        service.install(unit, use_systemctl=True, daemon_running=False, run=Recorder("enable"))


def test_uninstall_disables_and_removes(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    unit = service.build("user", env)
    service.install(unit, use_systemctl=False, daemon_running=False)
    link = unit.path.parent / "default.target.wants" / service.UNIT_NAME
    link.parent.mkdir()
    link.symlink_to(unit.path)  # what `systemctl enable` leaves
    run = Recorder()
    result = service.uninstall("user", env, use_systemctl=True, run=run)
    assert run.calls == [
        "systemctl --user disable --now streamalchemy.service",
        "systemctl --user daemon-reload",
    ]
    assert not unit.path.exists() and not link.is_symlink()
    assert result["message"] == f"removed {unit.path}"
    again = service.uninstall("user", env, use_systemctl=True, run=run)
    assert again["success"] is True and "no unit" in again["message"]


# -- the command ----------------------------------------------------------------------


def test_service_install_print_writes_nothing(
    tmp_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    proc = cli("service", "install", "--user", "--print")
    assert proc.returncode == 0, proc.stderr
    assert fields(proc.stdout)["Type"] == ["notify"]
    assert f'"STREAMALCHEMY_HOME={tmp_home}"' in fields(proc.stdout)["Environment"]
    assert not (tmp_path / "systemd").exists()


def test_service_install_then_uninstall(
    tmp_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = tmp_path / "systemd" / "user" / service.UNIT_NAME
    proc = cli("service", "install", "--user", "--no-systemctl")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {path}" in proc.stdout
    assert "systemctl --user enable --now streamalchemy.service" in proc.stdout
    assert fields(path.read_text())["ExecStart"][0].endswith("daemon run")
    code, doc = cli_json("service", "uninstall", "--user", "--no-systemctl")
    assert code == 0 and doc["success"] is True and doc["message"] == f"removed {path}"
    assert not path.exists()


# -- the daemon's side of Type=notify --------------------------------------------------


def test_daemon_notifies_ready_once_its_socket_answers_then_stopping(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_home / "notify"))
    notify.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_home / "notify"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamalchemy", "daemon", "run"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert notify.recv(4096) == b"READY=1"
        with socket.socket(socket.AF_UNIX) as control:
            control.connect(str(tmp_home / "streamalchemy.sock"))  # answers already
        assert cli_json("daemon", "status")[1]["pid"] == proc.pid
        proc.terminate()
        assert notify.recv(4096) == b"STOPPING=1"
        wait_for(lambda: proc.poll() is not None, 20, "the daemon to exit")
        assert proc.returncode == 0
    finally:
        notify.close()
        kill_tree(proc)
