"""Secrets in URLs: the one masking function, and ``${NAME}`` references resolved at launch.

``mask_credentials`` is applied at the edges (every reply the daemon sends, every
log line, every document the CLI prints); the state file itself keeps what the user
gave, literal secrets included (it is 0600), and a reference as a reference.
Nothing here starts processes or writes files.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamalchemy.errors import InvalidInput

if TYPE_CHECKING:
    import logging

    from streamalchemy.core.spec import StreamSpec

MASK = "***"
# Query parameter names that carry a secret: these words alone or as a part
# (access_token, api_key, X-Amz-Signature), and names that end in them (apikey,
# streamkey). "auth" also starts a secret name (authorization, auth_token).
SECRET_WORDS = frozenset(
    {"token", "key", "password", "passwd", "pwd", "pass", "secret", "auth", "sig", "signature"}
    | {"passphrase", "credential", "credentials", "session", "jwt", "apikey"}
)
_SECRET_SUFFIXES = ("token", "key", "password", "passwd", "secret", "signature", "passphrase")
RTMP_SCHEMES = frozenset({"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"})

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A URL in free text (FFmpeg log lines quote them in '...').
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>[^\s'\"<>]*)")
# userinfo in user:pass@host; the password may itself hold an unescaped '@'.
_USERINFO = re.compile(r"(?P<user>[^:/?#@]*)(?::(?P<pw>[^/?#]*))?@")
_PARAM = re.compile(r"(?P<lead>[?&;])(?P<key>[^=&;#]+)=(?P<value>[^&;#]*)")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter called ``name`` holds a secret (case-insensitive)."""
    lowered = name.lower()
    parts = set(re.split(r"[^a-z0-9]+", lowered))
    return (
        bool(parts & SECRET_WORDS)
        or lowered.endswith(_SECRET_SUFFIXES)
        or lowered.startswith("auth")
    )


def _hidden(value: str) -> str:
    """``value`` masked, unless it is only a ``${NAME}`` reference (which is no secret)."""
    return value if _REF.fullmatch(value) else MASK


def _mask_url(m: re.Match[str]) -> str:
    scheme, rest = m["scheme"], m["rest"]
    user = _USERINFO.match(rest)
    userinfo = ""
    if user is not None:
        userinfo = _hidden(user["user"])
        if user["pw"] is not None:
            userinfo += ":" + _hidden(user["pw"])
        userinfo += "@"
        rest = rest[user.end() :]
    path, sep, query = rest.partition("?")
    if scheme.lower() in RTMP_SCHEMES:
        # rtmp://host/APP/STREAM-KEY: everything after the application is the key.
        segments = path.split("/", 2)
        if len(segments) == 3 and segments[2]:
            path = f"{segments[0]}/{segments[1]}/{_hidden(segments[2])}"
    if sep:
        query = _PARAM.sub(_mask_param, sep + query)[1:]
    return f"{scheme}://{userinfo}{path}{sep}{query}"


def _mask_param(m: re.Match[str]) -> str:
    if not m["value"] or not is_secret_param(m["key"]):
        return m[0]
    return f"{m['lead']}{m['key']}={_hidden(m['value'])}"


def mask_credentials(text: str) -> str:
    """Hide every secret of every URL in ``text`` (FFmpeg log lines included).

    The user and password of ``user:pass@``, the value of secret-looking query
    parameters (``token``, ``key``, ``password``, ``secret``, ``auth``, ``sig``,
    ``signature``, ... see ``is_secret_param``), and an RTMP URL's stream key (the
    path after the application: ``rtmp://host/live/***``). A ``${NAME}`` reference
    stays as it is: it names a secret without holding it.
    """
    if "://" not in text:
        return text
    return _URL.sub(_mask_url, text)


def mask_document(doc: Any) -> Any:
    """``doc`` (a JSON document) with ``mask_credentials`` applied to every string in it."""
    if isinstance(doc, str):
        return mask_credentials(doc)
    if isinstance(doc, Mapping):
        return {key: mask_document(value) for key, value in doc.items()}
    if isinstance(doc, list | tuple):
        return [mask_document(value) for value in doc]
    return doc


def mask_record(record: logging.LogRecord) -> bool:
    """A log handler's filter (``handler.addFilter(mask_record)``): mask the whole record."""
    import logging

    message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = mask_credentials(record.exc_text)
    record.msg, record.args = mask_credentials(message), None
    return True


def mask_argv(argv: list[str]) -> list[str]:
    """A command line as it may be recorded or shown."""
    return [mask_credentials(arg) for arg in argv]


def has_secret(url: str) -> bool:
    """Whether ``url`` holds a literal secret or a reference to one."""
    return mask_credentials(url) != url or bool(_REF.search(url))


# -- ${NAME} references ------------------------------------------------------------------


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
