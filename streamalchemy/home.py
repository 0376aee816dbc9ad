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
import socket
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


def problem(path: Path, *, directory: bool, follow: bool = True) -> str | None:
    """Why ``path`` is unsafe, as one line with the command that fixes it; None when safe.

    ``follow=False`` checks a symlink itself (the daemon never writes through one there).
    """
    try:
        st = os.stat(path) if follow else os.lstat(path)
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
        link = "-h " if stat.S_ISLNK(st.st_mode) else ""
        fixes.append(f"chown {link}{_user(uid)} {path}")
    if st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode):
        whys.append(f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
        fixes.append(f"chmod go-w {path}")
    if not whys:
        return None
    risk = "plant files in it" if directory else "have written it"
    return (
        f"refusing to use {kind} {path}: {' and '.join(whys)}, so another user could "
        f"{risk}; fix it with: {' && '.join(fixes)}"
    )


def check(settings: Settings) -> None:
    """Raise UnsafeHome naming the first unsafe directory or file (missing ones are fine)."""
    checks = [(d, True, True) for d in directories(settings)]
    # The daemon's own records are never written through a symlink: check the link.
    checks += [(settings.data_dir / f, False, False) for f in _DATA_FILES]
    # These are read, and the state file may be a symlink the user made: check the target.
    checks += [(settings.config_file.parent / f, False, True) for f in _CONFIG_FILES]
    # A state-file symlink must be the user's own (its target is where writes go).
    checks += [(settings.state_file, False, False), (settings.state_file, False, True)]
    checks += [(settings.config_file.parent / "credentials", True, True)]
    for path, is_dir, follow in checks:
        why = problem(path, directory=is_dir, follow=follow)
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


def bind_private(path: Path) -> socket.socket:
    """A Unix socket bound at ``path``, mode 0600, in a directory that is the user's alone.

    The umask is the process's: changing it here, even briefly, would change the mode
    of every file other threads create meanwhile. The daemon runs under umask 077, so
    the socket is the user's alone from its first instant; the chmod drops its x bits.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
    except OSError:
        sock.close()
        raise
    return sock
