"""A home nobody else can plant in: the daemon's directories are its user's alone.

As ssh refuses a ``~/.ssh`` that others can write, the daemon refuses to run on a
home, state, log, runtime or config directory (or a file it reads from them) that
is not owned by its user or that group or others can write: another user could
plant a state file, a children record or a config naming their own programs.
Missing directories are created 0700. The CLI runs the same check before it
starts a daemon, so the user sees the same one line instead of a timeout.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from streamalchemy.errors import InvalidInput
from streamalchemy.settings import Settings

# Files the daemon reads back and trusts, in the data and config directories.
_DATA_FILES = ("daemon.pid", "children.json")
_CONFIG_FILES = ("config.toml",)


class UnsafeHome(InvalidInput):
    """A directory or file of the daemon that another user could write (exit 2)."""


def directories(settings: Settings) -> list[Path]:
    """The home, state, log, runtime and config directories, once each, in that order."""
    dirs = [
        settings.data_dir,
        settings.state_file.parent,
        settings.log_dir,
        settings.socket.parent,
        settings.config_file.parent,
    ]
    return list(dict.fromkeys(Path(os.path.abspath(d)) for d in dirs))


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def problem(path: Path, *, directory: bool) -> str | None:
    """Why ``path`` is unsafe, as one line with the command that fixes it; None when safe."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror}"
    kind = "directory" if directory else "file"
    if directory and not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory; remove it or choose another home"
    uid = os.geteuid()
    fixes = []
    whys = []
    if st.st_uid != uid:
        whys.append(f"owned by {_user(st.st_uid)}, not {_user(uid)}")
        fixes.append(f"chown {_user(uid)} {path}")
    if st.st_mode & 0o022:
        whys.append(f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
        fixes.append(f"chmod go-w {path}")
    if not whys:
        return None
    return (
        f"refusing to use {kind} {path}: {' and '.join(whys)}, so another user could plant "
        f"files in it; fix it with: {' && '.join(fixes)}"
    )


def check(settings: Settings) -> None:
    """Raise UnsafeHome naming the first unsafe directory or file (missing ones are fine)."""
    dirs = directories(settings)
    files = [settings.data_dir / f for f in _DATA_FILES]
    files += [settings.config_file.parent / f for f in _CONFIG_FILES]
    files += [settings.state_file, settings.config_file.parent / "credentials"]
    for path, is_dir in [(d, True) for d in dirs] + [(f, f.name == "credentials") for f in files]:
        why = problem(path, directory=is_dir)
        if why is not None:
            raise UnsafeHome(why)


def prepare(settings: Settings) -> None:
    """Check the home, create what is missing 0700, and check again (nothing slipped in)."""
    check(settings)
    config_dir = settings.config_file.parent
    made = directories(settings)
    if config_dir not in made[:-1]:
        made.remove(config_dir)  # only read, and only when the user made it
    for directory in made:
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        for path in reversed(missing):  # parents too are 0700, whatever the umask
            path.mkdir(mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)
    check(settings)
