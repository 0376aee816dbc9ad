"""Shedding in the daemon: measure every second, ask the rule, shed or bring back.

Measures each stream's recent speed (its ``pace`` window) and CPU (/proc/PID/stat)
and the host's idle CPU (/proc/stat); ``shedding.Rule`` decides; a shed or a
bring-back takes the name's lock, as any start or stop does. Remembers, in a side
file beside the state file's data (``shedding.json``), each stream's last measured
CPU and which streams are shed, so that a restore holds back what will not fit and a
new daemon keeps a shed stream shed. The state file itself is not touched: a shed
stream stays saved as it was. Nothing here parses requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from streamalchemy.core.restore import Step
from streamalchemy.errors import StreamAlchemyError
from streamalchemy.server.shedding import (
    BRING_BACK,
    Decision,
    Rule,
    Seen,
    hold_back,
    real_time_need,
)
from streamalchemy.supervision import procs
from streamalchemy.supervision.pace import HostIdle, Window, host_cpu
from streamalchemy.supervision.rules import SHED
from streamalchemy.supervision.stream import Stream

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from streamalchemy.core.spec import StreamSpec
    from streamalchemy.server.inputsockets import InputSockets
    from streamalchemy.settings import Settings
    from streamalchemy.supervision.supervisor import Supervisor

log = logging.getLogger("streamalchemy.daemon")

SIDE_FILE = "shedding.json"
TICK = 1.0  # seconds between two looks
SAVE_EVERY = 30.0  # seconds between two writes of the measured CPU figures
CAPACITY = 0.9  # the share of the host's cores that a restore counts on for streams
FIT_WITHIN = 15.0  # seconds after a restore: judge with the figures there are by then
PACED = frozenset({"file", "testsrc"})  # sources read at their own pace (-re)


@dataclass
class Memory:
    """What outlives the daemon: last measured CPU (percent of a core) and shed streams."""

    path: Path
    cpu: dict[str, float] = field(default_factory=dict)
    shed: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> reason, count

    @classmethod
    def load(cls, path: Path) -> Memory:
        try:
            doc = json.loads(path.read_text())
            cpu = {str(k): float(v) for k, v in doc.get("cpu", {}).items()}
            shed = {str(k): dict(v) for k, v in doc.get("shed", {}).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return cls(path)  # none yet, or unreadable: only a hint is lost
        return cls(path, cpu, shed)

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(tmp, flags, 0o600), "w") as f:
                json.dump({"cpu": self.cpu, "shed": self.shed}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("cannot write %s: %s", self.path, exc)


class Owner(Protocol):
    """What shedding needs of the per-name lifecycle (``Controller`` is one)."""

    settings: Settings
    supervisor: Supervisor
    inputs: InputSockets

    def owning(self, name: str) -> AbstractAsyncContextManager[None]: ...
    def active(self, name: str) -> Stream | None: ...
    def launch(self, spec: StreamSpec, saved_at: float, encoder: str) -> Stream: ...


class Shedder:
    """Runs the shedding rule over the controller's streams once a second."""

    def __init__(self, controller: Owner, after: float, path: Path) -> None:
        self.controller = controller
        self.rule = Rule(after)
        self.host = HostIdle()
        self.memory = Memory.load(path)
        for name, entry in self.memory.shed.items():
            self.rule.was_shed(name, int(entry.get("count", 0)))
        self._cpu: dict[str, tuple[int, Window]] = {}  # name -> FFmpeg pid, CPU seconds
        self._seen_shed: set[str] = set()
        self._saved_at = time.monotonic()
        self._fit: tuple[float, set[str]] | None = None  # since when, the streams restored
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.rule.after > 0

    def start(self) -> None:
        """Start looking, once a stream runs (called from within the event loop)."""
        if self.enabled and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._loop(), name="shedding")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.enabled:
            self.memory.save()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.tick()
            except Exception:  # shedding must never take supervision down
                log.exception("shedding check failed")

    # -- each second -------------------------------------------------------------

    def restored(self, names: set[str]) -> None:
        """A restore just started ``names``: once their figures are in, shed at once
        what will not fit (``Rule.fit``) rather than one stream per decision."""
        if self.enabled and names:
            self._fit = (time.monotonic(), set(names))
            self.start()

    async def tick(self) -> None:
        mono = time.monotonic()
        streams = self.controller.supervisor.streams.values()
        if len({s.spec.priority for s in streams}) < 2 and not self._seen_shed:
            self._fit = None
            return  # nobody can be shed for anybody: not even a /proc read
        seen = self.measure(mono)
        idle = self.host.percent()
        if self._fit is not None and self._figures_in(seen, mono):
            self._fit = None
            decisions = self.rule.fit(mono, seen, self._capacity(seen, idle))
            outcomes = await asyncio.gather(
                *(self._carry_out(d, save=False) for d in decisions), return_exceptions=True
            )
            for d, outcome in zip(decisions, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.error("%s: could not be shed: %s", d.name, outcome)
            if decisions:
                await asyncio.to_thread(self.memory.save)
        decision = self.rule.decide(mono, seen, idle, self._capacity(seen, idle))
        if decision is not None:
            await self._carry_out(decision)
        if mono - self._saved_at >= SAVE_EVERY:
            self._saved_at = mono
            self._prune()
            await asyncio.to_thread(self.memory.save)

    def measure(self, mono: float) -> list[Seen]:
        """The figures the rule reads, and the CPU of each running stream remembered."""
        ticks = host_cpu()
        if ticks is not None:
            self.host.add(*ticks)
        now = time.time()
        seen = []
        for name, stream in list(self.controller.supervisor.streams.items()):
            paced = stream.spec.source_type in PACED
            speed = stream.pace.rate() if stream.status == "running" else None
            cpu = self._cpu_now(name, stream.pid, mono) if stream.status == "running" else None
            if cpu is not None:
                self.memory.cpu[name] = round(real_time_need(cpu, speed, paced), 1)
            elif stream.status == SHED:
                cpu = self.memory.cpu.get(name)
            seen.append(
                Seen(
                    name,
                    stream.spec.priority,
                    stream.status,
                    paced,
                    speed,
                    cpu,
                    stream.remaining(now),
                )
            )
        self._note_shed({s.name for s in seen if s.state == SHED})
        return seen

    def _figures_in(self, seen: list[Seen], mono: float) -> bool:
        """Whether every stream the last restore started has its figures (or it is late)."""
        assert self._fit is not None
        since, names = self._fit
        if mono - since >= FIT_WITHIN:
            return True
        waiting = [
            s
            for s in seen
            if s.name in names
            and (
                s.state == "starting"
                or (s.state == "running" and (s.cpu is None or (s.paced and s.speed is None)))
            )
        ]
        return not waiting

    def _capacity(self, seen: list[Seen], idle: float | None) -> float:
        """What the streams can have: CAPACITY of the cores, less what other work takes."""
        most = 100 * self.host.cores * CAPACITY
        if idle is None:
            return most
        using = sum(s.cpu or 0.0 for s in seen if s.state == "running")
        return min(most, idle + using)

    def _cpu_now(self, name: str, pid: int | None, mono: float) -> float | None:
        if pid is None:
            return None
        usage = procs.process_usage(pid)
        if usage is None:
            return None
        known = self._cpu.get(name)
        if known is None or known[0] != pid:
            known = self._cpu[name] = (pid, Window())
        known[1].add(mono, usage[0])
        rate = known[1].rate()
        return None if rate is None else 100 * rate

    def _note_shed(self, shed_now: set[str]) -> None:
        """Forget a shed stream once it is not shed any more (stopped, restarted, replaced)."""
        for name in self._seen_shed - shed_now:
            if self.memory.shed.pop(name, None) is not None:
                self.memory.save()
        self._seen_shed = shed_now
        for name in [n for n in self._cpu if n not in self.controller.supervisor.streams]:
            del self._cpu[name]

    def _prune(self) -> None:
        keep = set(self.controller.supervisor.streams) | set(self.memory.shed)
        self.memory.cpu = {n: c for n, c in self.memory.cpu.items() if n in keep}

    async def _carry_out(self, decision: Decision, save: bool = True) -> None:
        name, reason = decision.name, decision.reason
        controller = self.controller
        async with controller.owning(name):
            stream = controller.supervisor.streams.get(name)
            if decision.action == BRING_BACK:
                if stream is None or stream.status != SHED:
                    return  # stopped or replaced meanwhile
                self._bring_back(stream, reason)
                self.memory.shed.pop(name, None)
            else:
                if stream is None or stream.status != "running":
                    return
                log.warning("%s: %s", name, reason)
                await stream.shed(reason)
                controller.inputs.close(name)
                self.memory.shed[name] = {"reason": reason, "count": self.rule.shed_count(name)}
                self._seen_shed.add(name)
        if save:
            await asyncio.to_thread(self.memory.save)

    def _bring_back(self, shed: Stream, reason: str) -> None:
        try:
            stream = self.controller.launch(shed.spec, shed.saved_at, shed.encoder)
        except StreamAlchemyError as exc:  # a ${NAME} gone since: it stays shed, and says why
            shed.last_error = f"{shed.last_error}; cannot bring it back: {exc}"
            log.warning("%s: cannot bring it back: %s", shed.spec.name, exc)
            return
        stream.exits.extendleft(reversed(shed.exits))  # show keeps its history
        stream.restarts = shed.restarts
        stream.log.event(reason)
        log.info("%s: %s", shed.spec.name, reason)

    # -- restore -------------------------------------------------------------------

    def restore_plan(self, steps: list[Step]) -> list[Step]:
        """A restore's plan with shedding applied: a shed stream is not started again,
        a stream that was shed when the last daemon ended stays shed, and one that
        will not fit (by its last measured CPU) is held back. A held step is
        ``skipped`` with its spec: the caller holds it as a shed stream (``hold``)."""
        if not self.enabled:
            return steps
        streams = self.controller.supervisor.streams
        out: list[Step] = []
        for step in steps:
            current = streams.get(step.name)
            if current is not None and current.status == SHED:
                out.append(Step(step.name, "skipped", f"{current.last_error}"))
            elif step.result == "restored" and step.name in self.memory.shed:
                why = f"{self.memory.shed[step.name].get('reason', 'shed')} (before the restart)"
                out.append(replace(step, result="skipped", reason=why))
            else:
                out.append(step)
        running = [s for s in streams.values() if s.active]
        starting = [s for s in out if s.result == "restored" and s.spec is not None]
        priorities = [s.spec.priority for s in running] + [
            s.spec.priority for s in starting if s.spec is not None
        ]
        if not starting:
            return out
        held = hold_back(
            [(s.name, s.spec.priority, self.memory.cpu.get(s.name)) for s in starting if s.spec],
            top=max(priorities),
            used=sum(self.memory.cpu.get(s.spec.name, 0.0) for s in running),
            capacity=100 * self.host.cores * CAPACITY,
        )
        return [
            replace(s, result="skipped", reason=held[s.name]) if s.name in held else s for s in out
        ]

    def hold(self, step: Step) -> None:
        """Keep a held-back step's stream as shed; the caller owns the name."""
        spec, controller = step.spec, self.controller
        if spec is None or controller.active(spec.name) is not None:
            return
        settings = controller.settings
        controller.supervisor.launch(
            spec,
            saved_at=step.saved_at,
            encoder=step.encoder,
            target=spec.target(settings.rtsp_url, settings.hls_dir),
            argv_for=lambda *_: [],  # nothing runs: a bring-back launches anew
            held=step.reason,
        )
        self.memory.shed.setdefault(spec.name, {"reason": step.reason, "count": 0})
        self._seen_shed.add(spec.name)
        self.start()
