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
RETRY_MAX = 600.0  # the retry doubles while it keeps failing: a bad update bounces rarely
PRUNE_HOLD = 60.0  # seconds a file that lost most of its streams must stay so to prune them

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
        if dry_run or step.held:
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

    deletes = [s for s in steps if s.action == "delete" and not s.held]
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
    held: Mapping[str, str] | None = None,
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
        held=held,
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
        elif step["result"] != "done" and step["name"] in before:
            owned.add(step["name"])  # a delete that failed or is held: next time
        elif step["action"] == "other-shard" and step["name"] in before:
            owned.add(step["name"])  # still runs here until pruned
    return owned


# -- watching the file -------------------------------------------------------------------


def look(path: Path) -> tuple[tuple[int, int, bytes] | None, bytes]:
    """What ``path`` reads as now (through symlinks): (mtime, size, hash) and the bytes.

    The signature is None when the file cannot be read (or is refused: not a regular
    file, too large). Hashing the content, not only the inode or mtime, sees a
    ConfigMap update: Kubernetes swaps a ``..data`` symlink and the file's own link
    never changes. Blocking: the daemon calls it in a thread.
    """
    try:
        data = declarative.read_file(path)
        info = path.stat()
    except (InvalidInput, OSError):
        return None, b""
    return (info.st_mtime_ns, info.st_size, hashlib.sha256(data).digest()), data


ApplyFn = Callable[[dict[str, StreamSpec], set[str], dict[str, str]], Awaitable[dict[str, Any]]]


def invalid_step(name: str, error: str, known: bool) -> dict[str, Any]:
    """The plan row of a stream whose table does not validate: failed, left as it is."""
    action = "update" if known else "create"
    return {"name": name, "action": action, "changes": {}, "result": "failed", "reason": error}


def prune_guard(before: Collection[str], desired: Collection[str]) -> set[str]:
    """The streams the file brought and no longer lists, when that is most of them.

    A file that lost more than half of its streams (all of them included) is more
    often half-written or emptied by mistake than meant: those stops wait.
    """
    missing = set(before) - set(desired)
    return missing if len(missing) * 2 > len(before) else set()


class FileApplier:
    """Apply ``path`` (with prune limited to its own streams) now and whenever it changes.

    A version of the file is applied only once two looks ``interval`` apart read it the
    same (mtime, size and content): a file being rewritten in place is never applied
    half-written. Stops of most of the file's streams (``prune_guard``) wait until the
    file has stayed the same for ``prune_hold`` seconds, and are logged as held.
    Failed steps are tried again after ``retry`` seconds, doubling up to ``RETRY_MAX``.
    """

    def __init__(
        self,
        path: Path,
        record: AppliedRecord,
        apply_fn: ApplyFn,
        *,
        interval: float = POLL_INTERVAL,
        retry: float = RETRY_FAILED,
        prune_hold: float = PRUNE_HOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.record = record
        self.apply_fn = apply_fn
        self.interval = interval
        self.retry = retry
        self.prune_hold = prune_hold
        self.clock = clock
        self.seen: tuple[int, int, bytes] | None = None  # the file at the last look
        self.seen_at = 0.0  # when the file first read as ``seen``
        self.applied: tuple[int, int, bytes] | None = None  # the version last tried
        self.retry_at: float | None = None  # when to apply again (failed or held steps)
        self.failures = 0  # applies in a row with a failed step
        self.last: dict[str, Any] | None = None

    async def apply_now(self) -> dict[str, Any] | None:
        """One look: apply the file if it changed and has stayed the same since the last
        look, or to retry failed or held steps; the document, or None when not applied."""
        seen, data = await asyncio.to_thread(look, self.path)
        if seen != self.seen:
            self.seen, self.seen_at = seen, self.clock()
            return None  # new (or being written): applied once the next look agrees
        due = self.retry_at is not None and self.clock() >= self.retry_at
        if seen is None or (seen == self.applied and not due):
            return None
        self.applied, self.retry_at = seen, None
        try:
            desired, invalid = declarative.load_each(data, self.path)
        except InvalidInput as exc:
            log.error("apply %s: %s; nothing changed", self.path, exc)
            return None
        for error in invalid.values():
            log.error("apply %s; that stream is left as it is", error)
        current = self.record.load()
        before = current - set(invalid)  # a stream is never pruned for a typo in its table
        held = {}
        guarded = prune_guard(before, desired)
        hold_until = self.seen_at + self.prune_hold
        if guarded and self.clock() < hold_until:
            why = (
                f"held: the file lost {len(guarded)} of its {len(before)} streams; "
                f"stopped if it stays so for {self.prune_hold:.0f} s"
            )
            held = dict.fromkeys(guarded, why)
            log.warning("apply %s: %s (%s)", self.path, why, ", ".join(sorted(guarded)))
        try:
            doc = await self.apply_fn(desired, before, held)
        except BaseException:
            self.applied = None  # try again at the next look
            raise
        doc["plan"] += [
            invalid_step(name, error, name in current) for name, error in invalid.items()
        ]
        doc["success"] = doc["success"] and not invalid
        self.record.save(self.path, owned_after(doc, before))
        self._report(self.path, doc)
        failed = sum(1 for s in doc["plan"] if s["result"] == "failed")
        self.failures = self.failures + 1 if failed else 0
        if failed:
            backoff = min(self.retry * 2 ** (self.failures - 1), RETRY_MAX)
            self.retry_at = self.clock() + backoff
        if held:
            self.retry_at = min(self.retry_at or hold_until, hold_until)
        self.last = doc
        return doc

    @staticmethod
    def _report(path: Path, doc: Mapping[str, Any]) -> None:
        counts: dict[str, int] = {}
        for step in doc["plan"]:
            counts[step["action"]] = counts.get(step["action"], 0) + 1
        summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "no streams"
        failed = sum(1 for s in doc["plan"] if s["result"] == "failed")
        log.info("applied %s: %s%s", path, summary, f" ({failed} failed)" if failed else "")

    async def prune_first(self, ops: Ops, shard: tuple[int, int] | None) -> list[str]:
        """Before the launch restore: drop the saved streams FILE brought that are no longer ours.

        A stream that moved to another shard (or left the file) while this daemon was
        down must not run here again, not even for a moment, while its new shard runs it.
        A file that lost most of its streams (``prune_guard``) drops none of those here:
        the watch holds them as it would later.
        """
        try:
            data = await asyncio.to_thread(declarative.read_file, self.path)
            desired, invalid = declarative.load_each(data, self.path)
        except InvalidInput:
            return []  # the first apply reports it
        before = self.record.load()
        keep = prune_guard(before, desired) | set(invalid)
        steps = declarative.plan(
            desired,
            declarative.current_specs(await ops.saved(), {}),
            prune=True,
            shard=shard,
            prune_only=before - keep,
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

    async def apply_fn(
        desired: dict[str, StreamSpec], before: set[str], held: dict[str, str]
    ) -> dict[str, Any]:
        return await apply(desired, ops, prune=True, shard=shard, prune_only=before, held=held)

    return FileApplier(path, AppliedRecord(data_dir / "applied.json"), apply_fn)
