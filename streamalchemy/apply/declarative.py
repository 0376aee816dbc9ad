"""Declarative files: the streams that should exist, as TOML, and the plan that makes it so.

An apply file is validated through the same ``spec_from_request`` as ``start`` (one
vocabulary), compared with what runs on the normalised spec (what would be saved),
and turned into a plan: create, update (with the changed keys), delete, unchanged,
other-shard. Shards are assigned by rendezvous hashing, so every daemon given the
same file agrees without talking to the others. Also the reverse: saved streams as
a TOML file that ``apply`` takes back unchanged.

Pure: nothing here starts, stops or saves a stream (``applier`` carries a plan out).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamalchemy.core import outputs
from streamalchemy.core.durations import duration_text
from streamalchemy.core.masking import MASK, mask_url, secrets_in_url
from streamalchemy.core.options import SOURCE, START_OPTIONS
from streamalchemy.core.saved import spec_from_entry
from streamalchemy.core.spec import StreamSpec, spec_from_request
from streamalchemy.errors import InvalidInput

SOURCE_KEYS = ("file", "url", "testsrc")
OPTION_KEYS = tuple(START_OPTIONS)  # the start options after the source: one vocabulary
KEYS = SOURCE_KEYS + OPTION_KEYS
MAX_SHARDS = 10000  # as STREAMALCHEMY_SHARDS
MAX_FILE_BYTES = 4 << 20  # an apply file of a few thousand streams is under 1 MiB
ACTIONS = ("create", "update", "delete", "unchanged", "other-shard")

Table = dict[str, Any]
Changes = dict[str, list[Any]]


# -- reading a file -------------------------------------------------------------------


def read_file(path: Path) -> bytes:
    """The bytes of an apply file: a regular file of at most ``MAX_FILE_BYTES``.

    Opened without blocking, so that a FIFO put in its place is refused instead of
    waiting for a writer; never reads more than the limit (``/dev/zero`` included).
    """
    shown = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidInput(f"apply file not found: {shown!r}") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read apply file {shown!r}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"apply file {shown!r} is not a regular file; give a TOML file")
        data = b""
        while len(data) <= MAX_FILE_BYTES and (chunk := os.read(fd, 1 << 20)):
            data += chunk
    except OSError as exc:
        raise InvalidInput(f"cannot read apply file {shown!r}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInput(
            f"apply file {shown!r} is larger than {MAX_FILE_BYTES >> 20} MiB; split it"
        )
    return data


def load_file(path: Path) -> dict[str, StreamSpec]:
    """Read, parse and validate an apply file; InvalidInput names the stream and key or line."""
    return load_bytes(read_file(path), path)


def load_bytes(data: bytes, path: Path) -> dict[str, StreamSpec]:
    """Parse and validate what ``read_file`` read from ``path``."""
    return parse(_text(data, path), origin=str(path), base_dir=path.absolute().parent)


def load_each(data: bytes, path: Path) -> tuple[dict[str, StreamSpec], dict[str, str]]:
    """As ``load_bytes``, but each stream on its own: the valid specs, and the error of
    each invalid stream (a watched file: one typo must not hold back the others)."""
    text = _text(data, path)
    tables = _document(text, str(path), path.absolute().parent)
    specs: dict[str, StreamSpec] = {}
    errors: dict[str, str] = {}
    for name, table in tables.items():
        try:
            specs.update(validate({name: table}, origin=str(path), text=text))
        except InvalidInput as exc:
            errors[name] = str(exc)
    return specs, errors


def _text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"cannot read apply file {str(path)!r}: not UTF-8 ({exc})") from None


def parse(
    text: str, *, origin: str = "<apply file>", base_dir: Path | None = None
) -> dict[str, StreamSpec]:
    """Validate a whole apply document; relative paths are taken from ``base_dir``."""
    return validate(_document(text, origin, base_dir), origin=origin, text=text)


def _document(text: str, origin: str, base_dir: Path | None) -> dict[str, Table]:
    """The stream tables of an apply document, relative paths resolved."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{origin}: invalid TOML: {exc}") from None
    except RecursionError:  # arrays or inline tables nested a thousand deep
        raise InvalidInput(f"{origin}: invalid TOML: nested too deeply") from None
    tables = _tables(doc, origin)
    if base_dir is not None:
        tables = {name: resolve_paths(table, base_dir) for name, table in tables.items()}
    return tables


def _tables(doc: Mapping[str, Any], origin: str) -> dict[str, Table]:
    unknown = sorted(set(doc) - {"streams"})
    if unknown:
        raise InvalidInput(
            f"{origin}: unknown top-level key {unknown[0]!r}: "
            "an apply file holds only [streams.NAME] tables"
        )
    streams = doc.get("streams", {})
    if not isinstance(streams, dict):
        raise InvalidInput(f"{origin}: 'streams' must be a table of [streams.NAME] tables")
    for name, table in streams.items():
        if not isinstance(table, dict):
            raise InvalidInput(f"{origin}: stream {name!r} must be a table ([streams.{name}])")
    return streams


def resolve_paths(table: Table, base_dir: Path) -> Table:
    """Relative ``file`` and file ``output`` paths, taken from the apply file's directory."""
    out = dict(table)
    for key in ("file", "output"):
        value = out.get(key)
        if not isinstance(value, str) or not value or "://" in value:
            continue
        if key == "output" and not outputs.is_path(value):
            continue
        out[key] = os.path.abspath(base_dir / os.path.expanduser(value))
    return out


def validate(
    tables: Mapping[str, Any], *, origin: str = "apply", text: str | None = None
) -> dict[str, StreamSpec]:
    """Each table through ``start``'s validation; the first fault names its stream and key."""
    if not isinstance(tables, Mapping):
        raise InvalidInput(f"{origin}: 'streams' must be an object of stream tables")
    specs = {}
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise InvalidInput(f"{origin}: stream {name!r} must be a table")
        try:
            specs[name] = spec_for(name, table)
        except InvalidInput as exc:
            key = _culprit(name, table)
            line = _line_of(text, name, key) if text is not None else None
            where = f"{origin}: " + (f"line {line}: " if line else "")
            at = f"stream {name!r}" + (f", key {key!r}" if key else "")
            raise InvalidInput(f"{where}{at}: {exc}") from None
    return specs


def spec_for(name: str, table: Mapping[str, Any]) -> StreamSpec:
    """One stream table as ``start`` would take it (the name comes from the table's key)."""
    unknown = [k for k in table if k not in KEYS]
    if unknown:
        raise InvalidInput(f"unknown key {unknown[0]!r}: use {', '.join(KEYS)}")
    return spec_from_request({**table, "name": name})


def _culprit(name: str, table: Mapping[str, Any]) -> str | None:
    """The key that makes ``table`` invalid: the first whose addition breaks a valid subset."""
    unknown = [k for k in table if k not in KEYS]
    if unknown:
        return unknown[0]
    sources = [k for k in table if k in SOURCE_KEYS and table[k] not in (None, False)]
    if len(sources) != 1:
        return sources[1] if len(sources) > 1 else None
    partial: dict[str, Any] = {"name": name, sources[0]: table[sources[0]]}
    try:
        spec_from_request(partial)
    except InvalidInput:
        return None if name_invalid(name) else sources[0]
    for key in OPTION_KEYS:
        if key not in table:
            continue
        partial[key] = table[key]
        try:
            spec_from_request(partial)
        except InvalidInput:
            return key
    return None


def name_invalid(name: str) -> bool:
    try:
        spec_from_request({"name": name, "testsrc": True})
    except InvalidInput:
        return True
    return False


def _line_of(text: str, name: str, key: str | None) -> int | None:
    """The line of ``key`` in the table of ``name`` (or of its header), for the error."""
    lines = text.splitlines()
    quoted = re.escape(name)
    header = re.compile(rf"^\s*\[\s*streams\s*\.\s*(?:{quoted}|\"{quoted}\"|'{quoted}')\s*\]")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return None
    if key is not None:
        assignment = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
        for i in range(start + 1, len(lines)):
            if lines[i].lstrip().startswith("["):
                break
            if assignment.match(lines[i]):
                return i + 1
    return start + 1


# -- the normalised table of a spec ---------------------------------------------------


def table_of(spec: StreamSpec) -> Table:
    """The apply table of a spec: every key that applies, in the apply vocabulary."""
    table: Table = {}
    if spec.source_type == "file":
        table["file"] = spec.source
    elif spec.source_type == "rtsp":
        table["url"] = spec.source
    else:
        table["testsrc"] = True
    table["codec"] = spec.codec
    if spec.codec != "copy":
        table["resolution"] = SOURCE if spec.resolution is None else spec.resolution
        table["fps"] = SOURCE if spec.fps is None else spec.fps
        table["hwaccel"] = spec.hwaccel
    table["audio"] = spec.audio
    table["duration"] = duration_text(spec.duration)
    if spec.output:
        table["output"] = spec.output
    table["restart"] = spec.restart
    table["priority"] = spec.priority
    return table


def _shown(key: str, value: Any) -> Any:
    # mask_url keeps a ${NAME} reference (and its user name): it names a secret, holds none.
    return mask_url(value) if key in ("url", "output") and isinstance(value, str) else value


def with_saved_secrets(spec: StreamSpec, saved: StreamSpec | None) -> StreamSpec:
    """``spec`` with each URL that holds ``***`` where a secret goes given back its saved one.

    An export without ``--include-secrets`` writes ``***``; applied unchanged, it means
    "keep the saved secret" (the stream does not even restart). Anything else with
    ``***`` there (a new stream, a URL changed around it) is refused: apply never
    saves a masked value over a credential.
    """
    kept: dict[str, str] = {}
    for attr, label in (("source", "url"), ("output", "output")):
        value = getattr(spec, attr)
        if MASK not in secrets_in_url(value):
            continue
        before = getattr(saved, attr) if saved is not None else ""
        if not before or mask_url(before) != value:
            raise InvalidInput(
                f"stream {spec.name!r}: {label} {value!r} holds {MASK} where a secret goes, "
                "and it is not the saved URL masked: write the secret as ${NAME} (see the "
                "README) or export with --include-secrets"
            )
        kept[attr] = before
    source, output = kept.get("source", spec.source), kept.get("output", spec.output)
    return dataclasses.replace(spec, source=source, output=output) if kept else spec


def changes_between(old: StreamSpec, new: StreamSpec) -> Changes:
    """KEY: [OLD, NEW] for every key whose normalised value differs (secrets masked)."""
    before, after = table_of(old), table_of(new)
    keys = [k for k in KEYS if k in before or k in after]
    return {
        k: [_shown(k, before.get(k)), _shown(k, after.get(k))]
        for k in keys
        if before.get(k) != after.get(k)
    }


# -- shards -----------------------------------------------------------------------------


def score(shard: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{shard}:{name}".encode()).digest()[:8], "big")


def owner(name: str, shards: int) -> int:
    """The shard that runs ``name``: the one with the highest score (rendezvous hashing)."""
    return max(range(shards), key=lambda shard: score(shard, name))


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` with 0 <= I < N."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*/\s*(\d{1,5})\s*", text)
    if m is None or not int(m[1]) < int(m[2]) <= MAX_SHARDS:
        raise InvalidInput(
            f"invalid shard {text!r}: use I/N with 0 <= I < N <= {MAX_SHARDS}, e.g. 0/3"
        )
    return int(m[1]), int(m[2])


def auto_shard(hostname: str, shards: int | None) -> tuple[int, int]:
    """I from the host name's trailing number (``streamalchemy-3``), N from the settings."""
    m = re.search(r"(\d+)$", hostname)
    if m is None:
        raise InvalidInput(
            f"--shard auto needs a host name ending in a number (a StatefulSet pod's, "
            f"e.g. streamalchemy-0); this host is {hostname!r}: give --shard I/N"
        )
    if shards is None:
        raise InvalidInput(
            "--shard auto needs the number of shards: set STREAMALCHEMY_SHARDS "
            "(or shards in config.toml), or give --shard I/N"
        )
    index = int(m[1])
    if index >= shards:
        raise InvalidInput(
            f"--shard auto: host {hostname!r} is shard {index}, but STREAMALCHEMY_SHARDS is "
            f"{shards}; raise STREAMALCHEMY_SHARDS to the number of replicas"
        )
    return index, shards


def shard_text(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


# -- the plan ---------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    action: str
    spec: StreamSpec | None = None  # the desired spec (create, update)
    changes: Changes = field(default_factory=dict)
    result: str = "planned"
    reason: str = ""
    held: bool = False  # a delete planned but not carried out yet (see FileApplier)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "changes": self.changes,
            "result": self.result,
            "reason": self.reason,
        }


def current_specs(
    saved: Mapping[str, Mapping[str, Any]], running: Mapping[str, StreamSpec]
) -> dict[str, StreamSpec | None]:
    """What each known stream is now: its saved spec (what apply compares), else its
    running one (persistence off); None when the saved entry does not validate."""
    current: dict[str, StreamSpec | None] = dict(running)
    for name, entry in saved.items():
        try:
            current[name] = spec_from_entry(name, entry)
        except InvalidInput:
            current.setdefault(name, None)
    return current


def plan(
    desired: Mapping[str, StreamSpec],
    current: Mapping[str, StreamSpec | None],
    *,
    prune: bool = False,
    shard: tuple[int, int] | None = None,
    prune_only: Collection[str] | None = None,
    not_running: Collection[str] = (),
    held: Mapping[str, str] | None = None,
) -> list[Step]:
    """The steps that make ``current`` match ``desired``, in name order.

    ``prune_only`` limits deletes to those names (the streams that came from a file);
    ``not_running`` names saved streams that do not run: they are started again (an
    update without changes), since apply makes the running streams match the file.
    ``held`` maps names whose delete is planned but not carried out to the reason.
    """
    held = held or {}

    def prunable(name: str) -> bool:
        return prune_only is None or name in prune_only

    steps = []
    names = set(desired) | (set(current) if prune else set())
    for name in sorted(names):
        spec = desired.get(name)
        here = name in current
        if spec is None:
            if here and prunable(name):
                why = held.get(name)
                steps.append(Step(name, "delete", reason=why or "not in the file", held=bool(why)))
            continue
        if shard is not None and (theirs := owner(name, shard[1])) != shard[0]:
            where = f"belongs to shard {theirs}/{shard[1]}"
            if here and prune and prunable(name):
                steps.append(Step(name, "delete", reason=where))
            elif here:
                steps.append(
                    Step(name, "other-shard", reason=f"{where}; still runs here (use --prune)")
                )
            else:
                steps.append(Step(name, "other-shard", reason=where))
            continue
        old = current.get(name)
        spec = with_saved_secrets(spec, old)
        if not here:
            steps.append(Step(name, "create", spec))
        elif old == spec and name in not_running:
            steps.append(Step(name, "update", spec, reason="saved but not running: started again"))
        elif old == spec:
            steps.append(Step(name, "unchanged", spec))
        else:
            changes = changes_between(old, spec) if old is not None else {}
            why = "" if old is not None else "the saved entry is unreadable"
            steps.append(Step(name, "update", spec, changes, reason=why))
    return steps


def document(steps: list[Step], dry_run: bool) -> dict[str, Any]:
    """The ``apply`` JSON document."""
    return {
        "success": all(s.result != "failed" for s in steps),
        "dry_run": dry_run,
        "plan": [s.as_dict() for s in steps],
    }


# -- export -----------------------------------------------------------------------------


def export_tables(
    saved: Mapping[str, Mapping[str, Any]], *, include_secrets: bool = False
) -> dict[str, Table]:
    """The saved streams as apply tables; literal URL secrets masked unless asked for."""
    tables = {}
    for name, entry in sorted(saved.items()):
        try:
            spec = spec_from_entry(name, entry)
        except InvalidInput:
            continue  # the restore reports it; an export writes only what apply accepts
        table = table_of(spec)
        if not include_secrets:
            table = {k: _shown(k, v) for k, v in table.items()}
        tables[name] = table
    return tables


def export_toml(tables: Mapping[str, Table]) -> str:
    import tomli_w

    header = "# StreamAlchemy apply file: streamalchemy apply -f FILE\n"
    return header + tomli_w.dumps({"streams": dict(tables)})
