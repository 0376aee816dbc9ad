"""``${NAME}`` references in URLs, resolved at launch from files or the environment.

The daemon resolves a stream's references for FFmpeg only: what is saved, shown
and compared keeps the reference. Each value resolved is also remembered as a
secret (``core.masking.remember``), so that no reply or log line shows it. Nothing
here starts processes or writes files.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from streamalchemy.errors import InvalidInput

if TYPE_CHECKING:
    from streamalchemy.core.spec import StreamSpec

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CredentialError(InvalidInput):
    """A ``${NAME}`` reference that cannot be resolved (exit 2 at ``start``)."""


def references(text: str) -> list[str]:
    """The names ``text`` refers to with ``${NAME}``, in order, once each."""
    return list(dict.fromkeys(_REF.findall(text)))


def _read_private(path: Path, name: str) -> str | None:
    """The content of a credential file we own and nobody else can read, else refuse it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialError(
            f"cannot read credential ${{{name}}} from {path}: {exc.strerror}"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"credential ${{{name}}}: {path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise CredentialError(
            f"credential ${{{name}}}: {path} is not owned by you; fix it with: chown "
            f"{_user_name()} {path}"
        )
    if st.st_mode & 0o077:
        raise CredentialError(
            f"credential ${{{name}}}: {path} is readable by others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); fix it with: chmod 600 {path}"
        )
    return path.read_text(errors="replace").rstrip("\r\n")


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def lookup(name: str, config_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """The value of credential ``name``: systemd's credentials, our own file, the environment.

    In that order: ``$CREDENTIALS_DIRECTORY/NAME`` (``LoadCredential=``),
    ``<config dir>/credentials/NAME`` (0600 and ours, refused otherwise), ``$NAME``.
    """
    env = os.environ if env is None else env
    places = []
    systemd_dir = env.get("CREDENTIALS_DIRECTORY")
    if systemd_dir:
        places.append(f"{systemd_dir}/{name}")
        # systemd made this directory for us: its files need no mode check.
        try:
            return (Path(systemd_dir) / name).read_text(errors="replace").rstrip("\r\n")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CredentialError(
                f"cannot read credential ${{{name}}} from {systemd_dir}: {exc.strerror}"
            ) from None
    own = config_dir / "credentials" / name
    places.append(str(own))
    value = _read_private(own, name)
    if value is not None:
        return value
    places.append(f"the daemon's environment variable {name}")
    if name in env:
        return env[name]
    raise CredentialError(
        f"credential reference ${{{name}}} not found (looked in {', '.join(places)})"
    )


def resolve(text: str, config_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """``text`` with each ``${NAME}`` replaced by its value; CredentialError if one is missing."""
    if "${" not in text:
        return text

    def value(m: re.Match[str]) -> str:
        found = lookup(m[1], config_dir, env)
        if not found.isprintable():
            raise CredentialError(
                f"credential ${{{m[1]}}} holds control characters; a URL cannot contain them"
            )
        return found

    return _REF.sub(value, text)


def unresolved(
    texts: list[str], config_dir: Path, env: Mapping[str, str] | None = None
) -> str | None:
    """Why one of ``texts`` cannot be resolved (naming the reference), or None when all can."""
    try:
        for text in texts:
            resolve(text, config_dir, env)
    except CredentialError as exc:
        return str(exc)
    return None


def resolved_values(
    texts: list[str], config_dir: Path, env: Mapping[str, str] | None = None
) -> set[str]:
    """The values the references in ``texts`` stand for (each a secret to hide)."""
    return {lookup(name, config_dir, env) for text in texts for name in references(text)}


def resolve_spec(
    spec: StreamSpec, config_dir: Path, env: Mapping[str, str] | None = None
) -> StreamSpec:
    """``spec`` with its source and output references resolved, for FFmpeg only.

    What is saved, shown and compared stays ``spec`` itself, with its references.
    """
    source = resolve(spec.source, config_dir, env)
    output = resolve(spec.output, config_dir, env)
    if (source, output) == (spec.source, spec.output):
        return spec
    return dataclasses.replace(spec, source=source, output=output)
