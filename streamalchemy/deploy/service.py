"""A systemd unit for the daemon, so that streams come back after a reboot (pm2's ``startup``).

The unit runs ``streamalchemy daemon run`` as ``Type=notify``: systemd counts the
daemon started once it has sent ``READY=1``, that is once its socket answers;
``systemctl reload`` runs ``streamalchemy daemon restart`` (an in-place upgrade), and
``KillMode=process`` lets the streams outlive a daemon that dies.
This module only writes and removes the unit file and, when a systemd manager is
reachable, asks ``systemctl`` to load it; it never touches streams or the state file.
"""

from __future__ import annotations

import getpass
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import streamalchemy
from streamalchemy.errors import InvalidInput, OperationFailed

Flavour = Literal["user", "system"]
UNIT_NAME = "streamalchemy.service"
# The daemon gives every FFmpeg 5 s to exit after SIGTERM, all at once; systemd must
# wait longer than that before it SIGKILLs what is left in the unit's cgroup.
STOP_TIMEOUT = 30
SYSTEM_HOME = "/var/lib/streamalchemy"
NOFILE_LIMIT = 65536  # open files: a few per stream, thousands of streams
# The settings the daemon reads from its environment; anything else stays out of the unit.
_ENV_PREFIXES = ("STREAMALCHEMY_", "STREAM_PERSISTENCE_", "ENABLE_STREAM_PERSISTENCE")

Runner = Callable[[Sequence[str]], int]


@dataclass(frozen=True)
class Unit:
    flavour: Flavour
    path: Path
    text: str
    notes: tuple[str, ...] = ()


def flavour_for(user: bool | None) -> Flavour:
    """``--user``/``--system``; without either, root gets a system unit, anyone else a user one."""
    if user is None:
        user = os.geteuid() != 0
    return "user" if user else "system"


def unit_path(flavour: Flavour, env: Mapping[str, str]) -> Path:
    if flavour == "system":
        return Path("/etc/systemd/system") / UNIT_NAME
    config = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT_NAME


def exec_start() -> tuple[list[str], dict[str, str]]:
    """The command that runs this very installation's daemon, and any environment it needs.

    The console script next to this Python is preferred; without one (a source
    checkout run with ``python -m``) the package's directory goes on PYTHONPATH.
    """
    script = Path(sys.executable).parent / "streamalchemy"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "daemon", "run"], {}
    root = Path(streamalchemy.__file__).resolve().parent.parent
    site_dirs = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    extra = {} if root in site_dirs else {"PYTHONPATH": str(root)}
    return [sys.executable, "-m", "streamalchemy", "daemon", "run"], extra


def reload_command(command: Sequence[str]) -> list[str]:
    """``daemon restart`` through the same installation as ``daemon run``."""
    return [*command[:-1], "restart"]


def _checked(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise InvalidInput(f"a unit file line cannot hold a line break: {value!r}")
    # systemd expands %-specifiers everywhere; a literal % is written %%.
    return value.replace("%", "%%")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exec_line(command: Sequence[str]) -> str:
    """The value of ExecStart=, with %-specifiers escaped and $VARIABLES in the arguments.

    systemd expands variables in the arguments only, never in the executable's path.
    """
    words = [_checked(command[0]), *(_checked(w).replace("$", "$$") for w in command[1:])]
    return " ".join(w if w and not any(c in w for c in " \t\"'\\;") else _quote(w) for w in words)


def _target(flavour: Flavour) -> str:
    return "multi-user.target" if flavour == "system" else "default.target"


def render(
    flavour: Flavour,
    command: Sequence[str],
    environment: Mapping[str, str],
    run_as: str | None = None,
) -> str:
    """The unit file's text: pure, so that tests can verify it with systemd-analyze."""
    unit = [
        "[Unit]",
        "Description=StreamAlchemy: supervised FFmpeg streams, restored after restarts",
    ]
    if flavour == "system":
        # Streams push to and pull from the network: start once it is up.
        unit += ["Wants=network-online.target", "After=network-online.target"]
    service = [
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={_exec_line(command)}",
        # `systemctl reload`: the daemon replaces itself with the code installed now, in
        # place (same pid); no stream stops. Synchronous: a refused upgrade fails the reload.
        f"ExecReload={_exec_line(reload_command(command))}",
        *(f"Environment={_quote(_checked(f'{k}={v}'))}" for k, v in sorted(environment.items())),
        "Restart=on-failure",
        "RestartSec=2",
        # Signals go to the daemon alone, as docker's unit does: on SIGTERM it stops its
        # FFmpeg process groups itself and keeps the state file; a daemon that dies
        # (SIGKILL, OOM, crash) leaves the streams running for the next one to adopt.
        "KillMode=process",
        f"TimeoutStopSec={STOP_TIMEOUT}",
        # One descriptor per stream's log, progress and lock file, and per client.
        f"LimitNOFILE={NOFILE_LIMIT}",
        # ${NAME} in a stream's --url or --output is read at launch from
        # $CREDENTIALS_DIRECTORY/NAME first: systemd hands each named file to the
        # daemon alone.
        "# Secrets for ${NAME} in --url/--output (one line per secret):",
        "#LoadCredential=CAM_PASS:/etc/streamalchemy/credentials/CAM_PASS",
    ]
    if run_as is not None:
        service.append(f"User={_checked(run_as)}")
    if environment.get("STREAMALCHEMY_HOME") == SYSTEM_HOME:
        # systemd creates it, owned by User=, before the daemon starts.
        service += ["StateDirectory=streamalchemy", "StateDirectoryMode=0700"]
    return "\n".join([*unit, *service, "", "[Install]", f"WantedBy={_target(flavour)}", ""])


def build(flavour: Flavour, env: Mapping[str, str], run_as: str | None = None) -> Unit:
    """The unit for this installation, carrying the settings set in ``env``.

    A system unit starts at boot, before anyone logs in, when the per-user runtime
    directory (home of the default socket) does not exist yet; so without an
    explicit STREAMALCHEMY_HOME it gets one systemd creates, /var/lib/streamalchemy.
    """
    command, extra = exec_start()
    environment = {k: v for k, v in env.items() if k.startswith(_ENV_PREFIXES) and v}
    environment.update(extra)
    notes = []
    if flavour == "user":
        run_as = None
        notes.append(
            "user units start at login; to start this one at boot, run "
            f"`sudo loginctl enable-linger {getpass.getuser()}`"
        )
    else:
        run_as = run_as or env.get("SUDO_USER") or getpass.getuser()
        if "STREAMALCHEMY_HOME" not in environment:
            environment["STREAMALCHEMY_HOME"] = SYSTEM_HOME
            notes.append(
                f"the daemon keeps everything in {SYSTEM_HOME}: set "
                f"STREAMALCHEMY_HOME={SYSTEM_HOME} for {run_as}'s shell and cron jobs too, "
                "so that the CLI talks to it"
            )
    text = render(flavour, command, environment, run_as)
    return Unit(flavour, unit_path(flavour, env), text, tuple(notes))


def _systemctl(flavour: Flavour, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if flavour == "user" else []), *args]


def _run(argv: Sequence[str]) -> int:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=60, check=False).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 1


def systemctl_usable(flavour: Flavour) -> bool:
    """True when a systemd manager of this flavour answers (not in most containers)."""
    if shutil.which("systemctl") is None:
        return False
    try:
        probe = subprocess.run(
            _systemctl(flavour, "show-environment"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _apply(commands: list[list[str]], run: Runner) -> None:
    for argv in commands:
        if run(argv) != 0:
            raise OperationFailed(f"`{' '.join(argv)}` failed; see its output above")


def install(
    unit: Unit, *, use_systemctl: bool, daemon_running: bool, run: Runner = _run
) -> dict[str, Any]:
    """Write the unit file; with ``use_systemctl``, load, enable and start it.

    A daemon already running outside systemd would make the unit's daemon exit
    ("already running") and systemd retry in vain, so then the unit is only enabled
    and the user is told how to hand over.
    """
    try:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        unit.path.write_text(unit.text)
    except OSError as exc:
        hint = " (run it with sudo)" if unit.flavour == "system" else ""
        raise OperationFailed(f"cannot write {unit.path}: {exc.strerror}{hint}") from None
    enable = ["enable", UNIT_NAME] if daemon_running else ["enable", "--now", UNIT_NAME]
    commands = [_systemctl(unit.flavour, "daemon-reload"), _systemctl(unit.flavour, *enable)]
    if use_systemctl:
        _apply(commands, run)
    notes = list(unit.notes)
    if daemon_running:
        start = " ".join(_systemctl(unit.flavour, "start", UNIT_NAME))
        notes.append(
            "a daemon started outside systemd is running: hand its streams over with "
            f"`streamalchemy daemon stop && {start}`"
        )
    return {
        "success": True,
        "path": str(unit.path),
        "flavour": unit.flavour,
        "commands": [" ".join(c) for c in commands],
        "ran": use_systemctl,
        "notes": notes,
    }


def uninstall(
    flavour: Flavour, env: Mapping[str, str], *, use_systemctl: bool, run: Runner = _run
) -> dict[str, Any]:
    """Stop and disable the unit, and remove its file.

    Disabling is removing the ``WantedBy=`` link, done by hand when systemd is not
    reachable; the commands returned then are what is left to do where it is.
    """
    path = unit_path(flavour, env)
    result: dict[str, Any] = {"success": True, "path": str(path), "flavour": flavour}
    if not path.exists():
        return {**result, "commands": [], "ran": False, "message": f"no unit at {path}"}
    first = ["disable", "--now"] if use_systemctl else ["stop"]
    commands = [_systemctl(flavour, *first, UNIT_NAME), _systemctl(flavour, "daemon-reload")]
    if use_systemctl:
        _apply(commands[:1], run)
    try:
        (path.parent / f"{_target(flavour)}.wants" / UNIT_NAME).unlink(missing_ok=True)
        path.unlink()
    except OSError as exc:
        raise OperationFailed(f"cannot remove {path}: {exc.strerror}") from None
    if use_systemctl:
        _apply(commands[1:], run)
    return {
        **result,
        "commands": [" ".join(c) for c in commands],
        "ran": use_systemctl,
        "message": f"removed {path}",
    }


def summary(result: Mapping[str, Any]) -> str:
    """What ``install`` or ``uninstall`` did, for people."""
    lines = [result.get("message", f"wrote {result['path']}")]
    if result["ran"]:
        lines += [f"ran: {c}" for c in result["commands"]]
    elif result["commands"]:
        lines += ["systemctl was not run; where systemd runs, run:"]
        lines += [f"    {c}" for c in result["commands"]]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)
