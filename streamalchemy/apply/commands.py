"""The ``apply`` and ``export`` commands: what they do, returning the JSON document.

``cli`` parses and prints; this module reads the apply file (so that an invalid
one is refused before the daemon is asked anything), sends it to ``POST /apply``,
and writes exports from the state file (which works while the daemon is down).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from streamalchemy.apply import declarative
from streamalchemy.errors import InvalidInput, OperationFailed
from streamalchemy.settings import Settings, load_settings

FORMATS = ("toml", "kubernetes")
APPLY_TIMEOUT = 900.0  # seconds: a large file starts many streams, each confirmed


def apply_file(
    path: str, *, prune: bool, dry_run: bool, shard: str | None, settings: Settings | None = None
) -> dict[str, Any]:
    """Validate FILE, then have the daemon make its streams match it (or plan only)."""
    from streamalchemy.client.connection import Client

    desired = declarative.load_file(Path(os.path.expanduser(path)))
    if shard is not None:
        declarative.parse_shard(shard)  # refused here, before the daemon is asked
    settings = settings or load_settings()
    client = Client(settings)
    if dry_run and not client.reachable():
        # Plan from the state file: starting a daemon would restore for real.
        return _plan_offline(settings, desired, prune, shard)
    body = {
        "streams": {name: declarative.table_of(spec) for name, spec in desired.items()},
        "prune": prune,
        "dry_run": dry_run,
        "shard": shard,
    }
    return client.request("POST", "/apply", body, timeout=APPLY_TIMEOUT)


def daemon_apply(
    path: str | None, shard: str | None, settings: Settings
) -> tuple[Path, tuple[int, int] | None] | None:
    """Check ``daemon run --apply FILE --shard`` before the daemon binds anything."""
    if path is None:
        if shard is not None:
            raise InvalidInput("--shard needs --apply FILE")
        return None
    file = Path(os.path.expanduser(path)).absolute()
    if not os.access(file, os.R_OK) or not file.is_file():
        raise InvalidInput(f"apply file not found or unreadable: {str(file)!r}")
    # Invalid content does not stop the daemon: it restores, logs the line at fault and
    # applies the file once it is fixed (a typo must not take every stream down).
    if shard is None:
        return file, None
    if shard.strip().lower() == "auto":
        return file, declarative.auto_shard(socket.gethostname(), settings.shards)
    return file, declarative.parse_shard(shard)


def _plan_offline(
    settings: Settings, desired: dict[str, Any], prune: bool, shard: str | None
) -> dict[str, Any]:
    steps = declarative.plan(
        desired,
        declarative.current_specs(_saved(settings), {}),
        prune=prune,
        shard=None if shard is None else declarative.parse_shard(shard),
    )
    return declarative.document(steps, dry_run=True)


def _saved(settings: Settings) -> dict[str, dict[str, Any]]:
    from streamalchemy.persist import StateStore

    store = StateStore(
        settings.state_file,
        backup_count=settings.backup_count,
        enabled=settings.persistence_enabled,
    )
    return store.load()


def export(
    *,
    fmt: str = "toml",
    shards: int = 1,
    output: str | None = None,
    include_secrets: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The saved streams as an apply file or as manifests; written to ``output`` if given."""
    if fmt not in FORMATS:
        raise InvalidInput(f"invalid format {fmt!r}: use toml or kubernetes")
    if shards < 1:
        raise InvalidInput(f"invalid shards {shards}: use a whole number from 1 up")
    tables = declarative.export_tables(
        _saved(settings or load_settings()), include_secrets=include_secrets
    )
    text = declarative.export_toml(tables)
    if fmt == "kubernetes":
        from streamalchemy.deploy import kubernetes as kube

        text = kube.dump(kube.manifests(text, shards))
        for name, key, path in _host_paths(tables):
            print(
                f"warning: {name}: {key} {path} is a path on this machine; in the pod it "
                "exists only on a volume mounted there (see docs/kubernetes.md)",
                file=sys.stderr,
            )
    result: dict[str, Any] = {
        "success": True,
        "format": fmt,
        "streams": sorted(tables),
        "output": None,
    }
    if output is None:
        result["text"] = text
        return result
    target = Path(os.path.expanduser(output)).absolute()
    try:
        # 0600: with --include-secrets it holds credentials.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as exc:
        raise OperationFailed(f"cannot write {str(target)!r}: {exc.strerror}") from None
    result["output"] = str(target)
    return result


def render_plan(doc: dict[str, Any]) -> None:
    """The plan as a table, one row a stream, each change as ``KEY: OLD -> NEW``."""
    from rich.table import Table
    from rich.text import Text

    from streamalchemy.client.render import console

    style = {"done": "green", "failed": "red", "planned": "cyan"}
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "ACTION", "CHANGES", "RESULT", "REASON"):
        table.add_column(column)
    for step in doc["plan"]:
        changes = "; ".join(
            f"{k}: {_text(v[0])} -> {_text(v[1])}" for k, v in step["changes"].items()
        )
        table.add_row(
            Text(step["name"]),
            Text(step["action"]),
            Text(changes),
            Text(step["result"], style=style.get(step["result"], "")),
            Text(step["reason"]),
        )
    if doc["plan"]:
        console.print(table)
    counts: dict[str, int] = {}
    for step in doc["plan"]:
        counts[step["action"]] = counts.get(step["action"], 0) + 1
    summary = ", ".join(f"{counts[a]} {a}" for a in declarative.ACTIONS if a in counts)
    failed = sum(1 for s in doc["plan"] if s["result"] == "failed")
    tail = " (dry run: nothing changed)" if doc["dry_run"] else ""
    tail += f"; {failed} failed" if failed else ""
    console.print(Text(f"plan: {summary or 'no streams'}{tail}"))


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _host_paths(tables: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(name, key, path) of each file source and file output the manifests carry."""
    return [
        (name, key, str(table[key]))
        for name, table in sorted(tables.items())
        for key in ("file", "output")
        if str(table.get(key, "")).startswith("/")
    ]
