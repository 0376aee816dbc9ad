"""What a stream's secrets are, and hiding them in any text that leaves the daemon.

Two nets. The first is a model: each source and output URL is parsed once
(``secrets_in_url``) into the literal values it holds (userinfo, every query, path
and fragment parameter whose name or value is secret-like, an SRT ``streamid``'s
user and password, an RTMP stream key; the daemon adds each resolved ``${NAME}``),
and ``remember`` keeps them, so that ``mask_credentials`` hides them wherever they
appear, whatever quotes, spaces or brackets they hold. The second is a pattern for
text that never went through a spec (a URL in an FFmpeg line, a client's own
document): it masks the same positions in anything that looks like a URL.

Both run in time linear in the text (no regex here backtracks over a run of
characters). Nothing here reads files or the environment (``server.references``
resolves ``${NAME}``), and nothing starts processes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    import logging

MASK = "***"
# Parameter names that carry a secret: these words alone or as a part (access_token,
# api_key, X-Amz-Signature), and names that end in them (apikey, streamkey). "auth"
# also starts a secret name (authorization, auth_token). hdnts/hdnea: Akamai tokens.
SECRET_WORDS = frozenset(
    {"token", "key", "password", "passwd", "pwd", "pw", "pass", "secret", "auth", "sig"}
    | {"signature", "passphrase", "credential", "credentials", "session", "jwt", "apikey"}
    | {"hdnts", "hdnea", "hmac", "hash"}
)
_SECRET_SUFFIXES = ("token", "key", "password", "passwd", "secret", "signature", "passphrase")
RTMP_SCHEMES = frozenset({"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"})
# A value shorter than this is hidden only where it sits in a URL (user:pw@, key=v):
# hiding "1" or "abc" in every line would hide pids and words, not a secret.
MIN_LITERAL = 4

_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_IS_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://")  # a string that is a URL
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
# Where a URL in free text ends (FFmpeg quotes URLs in '...').
_URL_REST = re.compile(r"[^\s'\"<>]*")
_PARAM_SPLIT = re.compile(r"([?&;#~,])")
_NAME_PARTS = re.compile(r"[^a-z0-9]+")
# A value that is a secret whatever its name: a JWT, or a long token of mixed letters
# and digits (hex or base64), or one that carries its own secret (Akamai's ~hmac=).
_JWT = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_TOKENISH = re.compile(r"[A-Za-z0-9+/_=-]{24,}")


def is_secret_param(name: str) -> bool:
    """Whether a parameter called ``name`` holds a secret (case-insensitive, %-decoded)."""
    lowered = unquote(name).lower()
    parts = set(_NAME_PARTS.split(lowered))
    return (
        bool(parts & SECRET_WORDS)
        or lowered.endswith(_SECRET_SUFFIXES)
        or lowered.startswith("auth")
    )


def is_secret_value(value: str) -> bool:
    """Whether ``value`` is secret-like whatever its parameter's name."""
    decoded = unquote(value)
    if "hmac=" in decoded.lower() or _JWT.fullmatch(decoded):
        return True
    # Digits and letters mixed, as random tokens are (not "camera_front_entrance_01").
    digits = sum(c.isdigit() for c in decoded)
    return bool(_TOKENISH.fullmatch(decoded)) and digits >= 4 and len(decoded) - digits >= 4


def is_reference(value: str) -> bool:
    """Whether ``value`` is only a ``${NAME}`` reference (which names a secret, holds none)."""
    return _REF.fullmatch(value) is not None


# -- the model ---------------------------------------------------------------------------


def secrets_in_url(url: str) -> set[str]:
    """The literal secret values ``url`` holds, as written (``${NAME}`` references left out).

    Parsed once, as a URL rather than searched as text: a password may hold ``'``,
    spaces, quotes or ``<>``.
    """
    if "://" not in url:
        return set()
    scheme, netloc, path, query, fragment = _split(url)
    found: set[str] = set()
    userinfo, at, _ = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if not colon:
            found.add(user)  # https://TOKEN@host: the user is the secret
        elif not is_reference(password):
            # The user name alone is hidden only beside its password (a stream or a
            # host may well be called "admin"); beside a ${NAME} it is no secret.
            found |= {userinfo, password}
    if scheme.lower() in RTMP_SCHEMES:
        # rtmp://host/APP/STREAM-KEY: everything after the application is the key.
        segments = path.split("/", 2)
        if len(segments) == 3 and segments[2]:
            found.add(segments[2].split(";", 1)[0])
    for name, value in _params(f"{path};{query}&{fragment}"):
        if name.lower() == "streamid":
            # Hidden as written and as the server decodes it (%00 is a NUL to it).
            found |= _streamid_secrets(value) | _streamid_secrets(unquote(value))
        elif is_secret_param(name) or is_secret_value(value):
            found.add(value)
    return {value for value in found if value and not is_reference(value)}


def _split(url: str) -> tuple[str, str, str, str, str]:
    """scheme, authority, path, query, fragment; unlike urlsplit, never refuses a URL."""
    scheme, _, rest = url.partition("://")
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    return scheme, netloc, slash + path, query, fragment


def _params(text: str) -> Iterable[tuple[str, str]]:
    for item in re.split(r"[&;]", text):
        name, sep, value = item.partition("=")
        if sep:
            yield name, value


def _streamid_secrets(value: str) -> set[str]:
    """SRT stream ids: MediaMTX's ``read:PATH:USER:PASS`` and the ``#!::u=..,s=..`` form."""
    fields = value.split(":")
    if len(fields) >= 4 and fields[0] in ("read", "publish"):
        return {":".join(fields[2:]), ":".join(fields[3:])}
    if value.startswith("#!::"):
        pairs = (item.partition("=") for item in value[4:].split(","))
        return {v for k, _, v in pairs if k in ("s", "t") or is_secret_param(k)}
    return set()


def spec_secrets(urls: Iterable[str], resolved: Iterable[str] = ()) -> set[str]:
    """Every secret of a stream: those of its URLs, and the values its ``${NAME}`` became."""
    found = {value for value in resolved if value}
    for url in urls:
        found |= secrets_in_url(url)
    return found


def has_secret(url: str) -> bool:
    """Whether ``url`` holds a literal secret or a reference to one."""
    return bool(secrets_in_url(url)) or _REF.search(url) is not None


class Secrets:
    """A set of literal secret values, and the one linear pass that hides them in text."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(values)

    @property
    def values(self) -> frozenset[str]:
        return frozenset(self._values)

    def add(self, values: Iterable[str]) -> None:
        """Know ``values`` from now on (with their %-decoded forms)."""
        new = set()
        for value in values:
            for form in (value, unquote(value)):
                if len(form) >= MIN_LITERAL and form != MASK and form not in self._values:
                    new.add(form)
        if new:
            self._values |= new
            # Longest first, so that a secret containing another is hidden whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def __contains__(self, value: str) -> bool:
        return value in self._values

    def hide(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(_replacement, text)


def _replacement(m: re.Match[str]) -> str:
    # user:password (and an SRT stream id's USER:PASS) keeps its shape: ***:***
    return f"{MASK}:{MASK}" if m[0].count(":") == 1 else MASK


# The daemon's known secrets: each launch adds its stream's, before FFmpeg runs.
KNOWN = Secrets()


def remember(values: Iterable[str]) -> None:
    """Hide ``values`` in everything masked from now on (replies, logs, records)."""
    KNOWN.add(values)


# -- the pattern: a second net for text that never went through a spec ------------------


def _hidden(value: str) -> str:
    """``value`` masked, unless it is only a ``${NAME}`` reference (which is no secret)."""
    return value if is_reference(value) else MASK


def _mask_url(scheme: str, rest: str) -> str:
    """``scheme://rest`` with the secrets in its usual places masked."""
    cut = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if 0 <= found < cut:
            cut = found
    authority, tail = rest[:cut], rest[cut:]
    userinfo, at, host = authority.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and is_reference(password):
            authority = f"{user}:{password}@{host}"
        else:
            authority = _hidden(user) + (f":{_hidden(password)}" if colon else "") + f"@{host}"
    if scheme.lower() in RTMP_SCHEMES:
        path, sep, after = tail.partition("?")
        segments = path.split("/", 2)
        if len(segments) == 3 and segments[2]:
            tail = f"{segments[0]}/{segments[1]}/{_hidden(segments[2])}{sep}{after}"
    return f"{scheme}://{authority}{_mask_params(tail)}"


def _mask_params(tail: str) -> str:
    pieces = _PARAM_SPLIT.split(tail)
    for i in range(2, len(pieces), 2):
        name, sep, value = pieces[i].partition("=")
        if sep and value and (is_secret_param(name) or is_secret_value(value)):
            pieces[i] = f"{name}={_hidden(value)}"
        elif sep and name.lower() == "streamid" and _streamid_secrets(unquote(value)):
            pieces[i] = f"{name}={MASK}"
    return "".join(pieces)


def _mask_pattern(text: str) -> str:
    """Every URL-looking part of ``text`` with ``_mask_url`` applied, in one pass."""
    out: list[str] = []
    pos = 0
    colon = text.find("://")
    while colon != -1:
        start = colon
        while start > pos and text[start - 1] in _SCHEME_CHARS:
            start -= 1  # never behind ``pos``: each character is walked at most twice
        while start < colon and not text[start].isalpha():
            start += 1
        rest = _URL_REST.match(text, colon + 3)
        end = rest.end() if rest is not None else colon + 3
        if start == colon:
            out.append(text[pos : colon + 3])
            pos = colon + 3
        else:
            out += [text[pos:start], _mask_url(text[start:colon], text[colon + 3 : end])]
            pos = end
        colon = text.find("://", pos)
    out.append(text[pos:])
    return "".join(out)


# -- the edges ---------------------------------------------------------------------------


def mask_credentials(text: str, secrets: Secrets | None = None) -> str:
    """Hide every secret in ``text``: the known values anywhere, and URL secrets by place.

    By place: the user and password of ``user:pass@``, secret-looking parameters
    (``token``, ``key``, ``password``, ``pw``, ``hdnts``, ``%74oken``, ... see
    ``is_secret_param``; in the query, the path's ``;`` parameters and the fragment),
    an SRT ``streamid`` with a user and password, and an RTMP URL's stream key
    (``rtmp://host/live/***``). A ``${NAME}`` reference stays: it names a secret
    without holding it.
    """
    text = (secrets or KNOWN).hide(text)
    return _mask_pattern(text) if "://" in text else text


def mask_url(url: str) -> str:
    """``url`` with its own secrets (found by the model) and every known one hidden."""
    return str(mask_document(url))


def mask_document(doc: Any) -> Any:
    """``doc`` (a JSON document) with every string masked.

    The secrets of every URL in it are found first, so a password the pattern cannot
    see (one with a quote or a space) is hidden in every field, not only its own.
    """
    new = {value for url in _strings(doc) if _IS_URL.match(url) for value in secrets_in_url(url)}
    new = {value for value in new if len(value) >= MIN_LITERAL and value not in KNOWN}
    # In the daemon every stream's secrets are known already: no new pattern per reply.
    return _masked(doc, Secrets(KNOWN.values | new) if new else KNOWN)


def _strings(doc: Any) -> Iterable[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, Mapping):
        for value in doc.values():
            yield from _strings(value)
    elif isinstance(doc, list | tuple):
        for value in doc:
            yield from _strings(value)


def _masked(doc: Any, secrets: Secrets) -> Any:
    if isinstance(doc, str):
        return mask_credentials(doc, secrets)
    if isinstance(doc, Mapping):
        return {key: _masked(value, secrets) for key, value in doc.items()}
    if isinstance(doc, list | tuple):
        return [_masked(value, secrets) for value in doc]
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
    """A command line as it may be recorded or shown (each URL in it parsed for secrets)."""
    return [str(arg) for arg in mask_document(list(argv))]
