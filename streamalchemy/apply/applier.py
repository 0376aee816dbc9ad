"""Carry out an apply plan through the daemon's per-name lifecycle, and watch an apply file.

Every step goes through the same ``start``/``stop`` the HTTP API uses, so that an
apply meeting a start, stop or restore of the same name waits its turn. Which
streams came from ``daemon run --apply FILE`` is kept in a small record beside the
state file, so that pruning never touches streams started by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamalchemy.apply import declarative
from streamalchemy.apply.declarative import Step
from streamalchemy.core.spec import StreamSpec, mask_credentials
from streamalchemy.errors import InvalidInput, StreamAlchemyError, StreamNotFound

log = logging.getLogger("streamalchemy.apply")

APPLY_PARALLEL = 8  # streams starting at once during an apply
POLL_INTERVAL = 1.0  # seconds between two looks at a watched apply file
RETRY_FAILED = 30.0  # seconds until a watched file whose apply had failures is applied again

Reply = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Ops:
    """What an apply needs of the daemon, bound by its controller to the per-name lifecycle.

    ``start`` and ``stop`` wait their turn on a name busy with another command; they
    raise the StreamAlchemyError that says why a step failed.
    """

    start: Callable[[StreamSpec, bool], Awaitable[object]]  # (spec, update)
    stop: Callable[[str], Awaitable[object]]
    saved: Callable[[], Awaitable[Mapping[str, Mapping[str, Any]]]]
    running: Callable[[], Mapping[str, StreamSpec]]  # the active streams' specs


def request_options(
    body: Mapping[str, Any],
) -> tuple[dict[str, StreamSpec], bool, bool, tuple[int, int] | None]:
    """Validate the body of ``POST /apply``: the streams, prune, dry_run and shard."""
    if not isinstance(body, Mapping):
        raise InvalidInput("the request body must be a JSON object")
    unknown = sorted(set(body) - {"streams", "prune", "dry_run", "shard"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}: use streams, prune, dry_run, shard")
    flags = []
    for key in ("prune", "dry_run"):
        value = body.get(key, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"{key} must be true or false, not {value!r}")
        flags.append(value)
    shard = body.get("shard")
    if shard is not None and not isinstance(shard, str):
        raise InvalidInput(f"shard must be a string I/N, not {shard!r}")
    desired = declarative.validate(body.get("streams", {}), origin="apply")
    return desired, flags[0], flags[1], None if shard is None else declarative.parse_shard(shard)


async def execute(steps: list[Step], ops: Ops, *, dry_run: bool) -> list[Step]:
    """Carry out ``steps`` in place: deletes first, then updates and creates, priority first."""
    for step in steps:
        if dry_run:
            step.result = "planned"
        elif step.action in ("unchanged", "other-shard"):
            step.result = "done"
    if dry_run:
        return steps
    slots = asyncio.Semaphore(APPLY_PARALLEL)

    async def carry_out(step: Step) -> None:
        async with slots:
            try:
                if step.action == "delete":
                    with contextlib.suppress(StreamNotFound):  # gone meanwhile: as wanted
                        await ops.stop(step.name)
                else:
                    assert step.spec is not None
                    await ops.start(step.spec, step.action == "update")
            except StreamAlchemyError as exc:
                step.result, step.reason = "failed", mask_credentials(" ".join(str(exc).split()))
            else:
                step.result = "done"
            log.info("apply %s: %s %s %s", step.name, step.action, step.result, step.reason)

    deletes = [s for s in steps if s.action == "delete"]
    await asyncio.gather(*(carry_out(s) for s in deletes))
    starts = [s for s in steps if s.action in ("create", "update")]
    starts.sort(key=lambda s: -(s.spec.priority if s.spec else 0))
    await asyncio.gather(*(carry_out(s) for s in starts))
    return steps


async def apply(
    desired: Mapping[str, StreamSpec],
    ops: Ops,
    *,
    prune: bool = False,
    dry_run: bool = False,
    shard: tuple[int, int] | None = None,
    prune_only: Collection[str] | None = None,
) -> dict[str, Any]:
    """Plan against what is saved and running, carry it out, and return the apply document."""
    saved, running = await ops.saved(), ops.running()
    current = declarative.current_specs(saved, running)
    steps = declarative.plan(
        desired,
        current,
        prune=prune,
        shard=shard,
        prune_only=prune_only,
        not_running=set(saved) - set(running),
    )
    await execute(steps, ops, dry_run=dry_run)
    return declarative.document(steps, dry_run)


# -- the record of what came from a watched file ---------------------------------------


class AppliedRecord:
    """The names of the streams a ``daemon run --apply FILE`` applied, kept beside the state."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> set[str]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return set()
        names = doc.get("names") if isinstance(doc, dict) else None
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def save(self, file: Path, names: Collection[str]) -> None:
        data = json.dumps({"file": str(file), "names": sorted(names)}, indent=1)
        fd, tmp = tempfile.mkstemp(prefix=".applied-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def owned_after(doc: Mapping[str, Any], before: Collection[str]) -> set[str]:
    """Names that came from the file after an apply: kept ones, and deletes that failed."""
    owned = set()
    for step in doc["plan"]:
        if step["action"] in ("create", "update", "unchanged"):
            owned.add(step["name"])
        elif step["result"] == "failed" and step["name"] in before:
            owned.add(step["name"])  # a delete that failed: try again next time
        elif step["action"] == "other-shard" and step["name"] in before:
            owned.add(step["name"])  # still runs here until pruned
    return owned


# -- watching the file -------------------------------------------------------------------


def digest(path: Path) -> bytes | None:
    """The hash of what ``path`` reads as now (through symlinks), or None when unreadable.

    Hashing the content, not the inode or mtime, sees a ConfigMap update: Kubernetes
    swaps a ``..data`` symlink and the file's own link never changes.
    """
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


ApplyFn = Callable[[dict[str, StreamSpec], set[str]], Awaitable[dict[str, Any]]]


class FileApplier:
    """Apply ``path`` (with prune limited to its own streams) now and whenever it changes."""

    def __init__(
        self,
        path: Path,
        record: AppliedRecord,
        apply_fn: ApplyFn,
        *,
        interval: float = POLL_INTERVAL,
        retry: float = RETRY_FAILED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.record = record
        self.apply_fn = apply_fn
        self.interval = interval
        self.retry = retry
        self.clock = clock
        self.applied: bytes | None = None  # digest of the last content tried
        self.retry_at: float | None = None  # when to apply again after a step failed
        self.last: dict[str, Any] | None = None

    async def apply_now(self) -> dict[str, Any] | None:
        """Apply the file if its content changed since the last try, or to retry failed
        steps (a camera that was down at launch); the document, or None when not applied."""
        seen = digest(self.path)
        due = self.retry_at is not None and self.clock() >= self.retry_at
        if seen is None or (seen == self.applied and not due):
            return None
        self.applied, self.retry_at = seen, None
        try:
            desired = declarative.load_file(self.path)
        except InvalidInput as exc:
            log.error("apply %s: %s; nothing changed", self.path, exc)
            return None
        before = self.record.load()
        try:
            doc = await self.apply_fn(desired, before)
        except BaseException:
            self.applied = None  # try again at the next look
            raise
        self.record.save(self.path, owned_after(doc, before))
        counts: dict[str, int] = {}
        for step in doc["plan"]:
            counts[step["action"]] = counts.get(step["action"], 0) + 1
        summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "no streams"
        failed = sum(1 for s in doc["plan"] if s["result"] == "failed")
        log.info("applied %s: %s%s", self.path, summary, f" ({failed} failed)" if failed else "")
        if failed:
            self.retry_at = self.clock() + self.retry
        self.last = doc
        return doc

    async def prune_first(self, ops: Ops, shard: tuple[int, int] | None) -> list[str]:
        """Before the launch restore: drop the saved streams FILE brought that are no longer ours.

        A stream that moved to another shard (or left the file) while this daemon was
        down must not run here again, not even for a moment, while its new shard runs it.
        """
        try:
            desired = declarative.load_file(self.path)
        except InvalidInput:
            return []  # the first apply reports it
        before = self.record.load()
        steps = declarative.plan(
            desired,
            declarative.current_specs(await ops.saved(), {}),
            prune=True,
            shard=shard,
            prune_only=before,
        )
        deletes = [s for s in steps if s.action == "delete"]
        await execute(deletes, ops, dry_run=False)
        dropped = [s.name for s in deletes if s.result == "done"]
        if dropped:
            self.record.save(self.path, before - set(dropped))
            log.info("apply %s: before the restore, dropped %s", self.path, ", ".join(dropped))
        return dropped

    async def run(self, after: Awaitable[Any] | None = None) -> None:
        """Apply once ``after`` is done (the launch restore), then poll until cancelled."""
        if after is not None:
            with contextlib.suppress(Exception):
                await after
        while True:
            try:
                await self.apply_now()
            except Exception:  # never let a bad apply end the watch
                log.exception("apply %s failed", self.path)
            await asyncio.sleep(self.interval)


# -- the daemon's side -------------------------------------------------------------------


async def handle_request(ops: Ops, body: Mapping[str, Any]) -> Reply:
    """``POST /apply``: 200 with the apply document (its ``success`` false when a step failed)."""
    desired, prune, dry_run, shard = request_options(body)
    return 200, await apply(desired, ops, prune=prune, dry_run=dry_run, shard=shard)


def file_applier(
    ops: Ops, path: Path, shard: tuple[int, int] | None, data_dir: Path
) -> FileApplier:
    """The watch of ``daemon run --apply FILE``: prune limited to the streams FILE brought."""

    async def apply_fn(desired: dict[str, StreamSpec], before: set[str]) -> dict[str, Any]:
        return await apply(desired, ops, prune=True, shard=shard, prune_only=before)

    return FileApplier(path, AppliedRecord(data_dir / "applied.json"), apply_fn)
