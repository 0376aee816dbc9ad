"""Bring the saved streams back: the restore plan (``core.restore``) carried out through
the per-name lifecycle, at launch and on ``POST /restore_streams``.

Every launch runs under its name's lock and re-plans the name once it holds it, so a
stop or start that came first wins. Nothing here owns a stream or decides what a
start, stop or restart does: that is the lifecycle (``server.controller``), which this
module reaches only through ``Lifecycle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from streamalchemy import encoders
from streamalchemy.core.restore import Step, dry_run_results, plan
from streamalchemy.core.saved import read_saved
from streamalchemy.core.spec import StreamSpec
from streamalchemy.errors import StateFileError, StreamAlchemyError
from streamalchemy.persist import StateStore, StateWriter
from streamalchemy.server.metrics import Metrics
from streamalchemy.server.shedder import Shedder
from streamalchemy.supervision import procs
from streamalchemy.supervision.adoption import Survivor
from streamalchemy.supervision.procs import ChildRecord
from streamalchemy.supervision.supervisor import Stream, Supervisor

log = logging.getLogger("streamalchemy.daemon")

RESTORE_PARALLEL = 64  # FFmpeg processes starting at once during a restore

Results = dict[str, dict[str, str]]


class Lifecycle(Protocol):
    """What a restore needs of the per-name lifecycle (``Controller`` is one)."""

    store: StateStore
    writer: StateWriter
    supervisor: Supervisor
    children: ChildRecord
    metrics: Metrics
    choose_encoder: encoders.Chooser
    not_restored: dict[str, str]
    confirm_window: float
    shedder: Shedder

    def owning(self, name: str) -> AbstractAsyncContextManager[None]: ...
    def active(self, name: str) -> Stream | None: ...
    def kept(self) -> set[str]: ...
    def launch(self, spec: StreamSpec, saved_at: float, encoder: str) -> Stream: ...
    def missing_credentials(self, spec: StreamSpec) -> str | None: ...
    def keep_retrying(self) -> None: ...
    async def restore(self, dry_run: bool = False) -> Results: ...


@dataclass
class _Snapshot:
    """The state file as a restore last read it, and its version just before that read."""

    version: object
    saved: dict[str, dict[str, Any]]


def _plan(c: Lifecycle, saved: Mapping[str, Any], running: set[str]) -> list[Step]:
    return plan(
        saved,
        running=running,
        choose_encoder=c.choose_encoder,
        credentials_missing=c.missing_credentials,
    )


async def _encoders_for(c: Lifecycle, saved: dict[str, dict[str, Any]]) -> None:
    """Probe the encoders off the loop, unless every saved stream is a copy."""
    codecs = {str(e.get("config", {}).get("video_codec", "h264")) for e in saved.values()}
    if codecs - {"copy"}:
        await c.choose_encoder.ready()


async def at_launch(c: Lifecycle, survivors: dict[str, Survivor], restore: bool) -> None:
    """Adopt what a previous daemon left running (live restore), then restore the rest."""
    await adopt(c, survivors)
    if restore:
        await until_done(c.restore)


async def adopt(c: Lifecycle, survivors: dict[str, Survivor]) -> None:
    """Live restore, before the restore: take over each saved stream's FFmpeg that a
    previous daemon left, running or ended (then handled as its exit); stop the ones
    whose stream is not saved: the state file decides what runs."""
    saved = await c.writer.load() if c.store.enabled else {}
    strays: list[Survivor] = []
    for name, survivor in survivors.items():
        view = read_saved(name, saved[name]) if name in saved else None
        encoder = str(survivor.record.get("encoder") or "")
        if view is None or view.spec is None or not encoder:
            strays.append(survivor)
            continue
        async with c.owning(name):
            log.info("adopting %s (pid %d)", name, survivor.process.pid)
            c.supervisor.adopting[name] = survivor  # its next launch takes it over
            try:
                c.launch(view.spec, view.saved_at, encoder)
            except StreamAlchemyError as exc:  # e.g. a ${NAME} gone: the restore reports it
                log.warning("%s: not adopted: %s", name, exc)
                strays.append(survivor)
            finally:
                c.supervisor.adopting.pop(name, None)
    for survivor in strays:
        if survivor.alive:
            pid = survivor.process.pid
            log.warning("stopping %s (pid %d): not saved", survivor.name, pid)
            c.supervisor.note(
                survivor.name,
                f"stopped FFmpeg (pid {pid}) left by a previous daemon: the stream is not saved",
            )
    await asyncio.gather(*(procs.stop(s.process, c.supervisor.grace) for s in strays if s.alive))
    for survivor in strays:
        survivor.forget()
    c.children.flush()


async def dry_run(c: Lifecycle) -> Results:
    """What a restore would do with each saved stream; nothing changes."""
    saved = await c.writer.load()
    await _encoders_for(c, saved)
    return dry_run_results(c.shedder.restore_plan(_plan(c, saved, c.kept())))


async def restore(c: Lifecycle) -> Results:
    """Restore every saved stream not running, up to RESTORE_PARALLEL at once."""
    # The file as this restore read it, and how it looked before: a launch re-reads
    # it only when it changed since (a stat, not a read, per stream).
    snapshot = _Snapshot(c.store.version(), {})
    snapshot.saved = saved = await c.writer.load()
    await _encoders_for(c, saved)
    steps = c.shedder.restore_plan(_plan(c, saved, c.kept()))
    results = {s.name: {"result": s.result, "reason": s.reason} for s in steps}
    slots = asyncio.Semaphore(RESTORE_PARALLEL)

    async def settle(step: Step) -> None:
        if step.result == "restored":
            async with slots, c.owning(step.name):
                step = await _replan(c, step.name, snapshot)
                if step.result == "restored":
                    results[step.name] = await _restore_one(c, step)
                    return
        results[step.name] = {"result": step.result, "reason": step.reason}
        if step.result == "skipped" and step.spec is not None:  # held back: shed
            async with c.owning(step.name):
                c.shedder.hold(step)
        if step.expired:
            async with c.owning(step.name):
                if c.active(step.name) is None:
                    with contextlib.suppress(StateFileError):
                        await c.writer.remove(step.name)
            c.not_restored.pop(step.name, None)
        else:
            c.not_restored[step.name] = step.reason
        log.info("restore %s: %s (%s)", step.name, step.result, step.reason)
        c.supervisor.note(step.name, f"restore {step.result}: {step.reason}")

    outcomes = await asyncio.gather(*(settle(s) for s in steps), return_exceptions=True)
    for step, outcome in zip(steps, outcomes, strict=True):
        if isinstance(outcome, BaseException):  # nothing escapes: it is that stream's failure
            log.error("restore %s: %s", step.name, outcome)
            results[step.name] = {"result": "failed", "reason": str(outcome)}
    c.children.flush()
    c.keep_retrying()
    c.shedder.restored({n for n, r in results.items() if r["result"] == "restored"})
    c.metrics.count_restore(results)
    return results


async def _replan(c: Lifecycle, name: str, snapshot: _Snapshot) -> Step:
    """Plan ``name`` again now that it is ours: it may have been stopped or started."""
    version = c.store.version()
    if version != snapshot.version:
        snapshot.saved = await c.writer.load()
        snapshot.version = version
    entry = snapshot.saved.get(name)
    if entry is None:
        return Step(name, "skipped", "no longer saved (stopped meanwhile)")
    return _plan(c, {name: entry}, {name} & c.kept())[0]


async def _restore_one(c: Lifecycle, step: Step) -> dict[str, str]:
    assert step.spec is not None
    stream = c.launch(step.spec, step.saved_at, step.encoder)
    failure = await stream.confirmed(c.confirm_window)
    # A failure leaves the stream saved, retrying under its restart policy.
    result = (
        {"result": "failed", "reason": failure}
        if failure
        else {"result": "restored", "reason": "started"}
    )
    log.info("restore %s: %s", step.name, result["reason"])
    return result


RETRY = 2.0  # seconds before a failed launch restore is tried again, doubling
RETRY_MAX = 60.0


async def until_done(run: Callable[[], Awaitable[object]]) -> None:
    """The launch restore, tried again (the wait doubling) until it runs: a state file
    locked or unreadable for a while must not leave every stream down until the
    daemon is restarted."""
    delay = RETRY
    while True:
        try:
            await run()
        except Exception as exc:
            log.error("the launch restore failed: %s; trying again in %gs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX)
        else:
            return
