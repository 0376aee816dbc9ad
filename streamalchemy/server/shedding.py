"""The shedding rule: which stream to stop when the machine cannot keep up, and when
to bring it back. Pure: given each stream's recent figures, the host's idle CPU and
the time, ``Rule.decide`` returns at most one decision; ``hold_back`` chooses what a
restore leaves out. Nothing here measures, stops or starts anything
(``server/shedder.py`` does).

The rule, in short:

- A stream of a real-time source (a file or a test pattern, read at its own pace)
  whose recent speed stays below ``REAL_TIME`` for ``after`` seconds, while a stream of
  lower priority runs, is suffering: the lowest-priority running stream is shed (the
  one using the most CPU among equals). A URL source's speed is its source's pace, not
  the machine's, so it never suffers; it is shed as any CPU user is.
- Streams of equal priority are never shed for each other.
- One change at a time: ``settle`` seconds after each (``after``, at most ``SETTLE``),
  so that its effect shows in the figures before the next.
- Sooner (``QUICK``) while the streams' real-time needs say more must go (``cut``).
- And after a restore, which starts every stream at once: once their figures are
  in, ``Rule.fit`` sheds in one step what they say will not fit (each stream's
  real-time need is its CPU divided by its recent speed), keeping the highest
  priorities; from then on, one change at a time again.
- A shed stream comes back, highest priority first (a lower one never overtakes a
  higher one), once the host has had idle CPU for its last measured use plus a margin,
  and no running stream has been slow, for ``after`` seconds; ``after`` doubles for
  each time it was shed again within ``FORGIVE`` seconds of coming back (backoff).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

REAL_TIME = 0.95  # below this recent speed, a real-time source is not keeping up
SETTLE = 10.0  # seconds between two decisions, at the most (``after`` when shorter)
SETTLE_MIN = 3.0  # ... and at the least
QUICK = 2.0  # seconds between two sheds while the figures say more must go
SLOWEST = 0.2  # a speed below this counts as this when a stream's need is estimated
MIN_WORTH = 2.0  # percent of a core: a stream using less frees nothing worth a stop
UNKNOWN_NEED = 100.0  # percent of a core assumed for a stream never measured
MARGIN = 0.25  # room wanted beyond a stream's last use, as a fraction of it ...
MARGIN_MIN = 5.0  # ... and at least this many percent of a core
BACKOFF_CAP = 600.0  # seconds: the longest a shed stream waits for room to last
FORGIVE = 600.0  # seconds back without being shed again: its backoff starts over
SHED = "shed"  # a decision, and the status of a stream shed
BRING_BACK = "bring back"


@dataclass(frozen=True)
class Seen:
    """One stream as the rule sees it.

    ``state``: ``running``, ``shed``, or anything else (starting, retrying: neither
    judged nor shed). ``speed``: output seconds per wall second over the recent window,
    None when not known. ``cpu``: percent of one core, recent while it runs, its last
    measured use when shed (None: never measured).
    """

    name: str
    priority: int
    state: str
    paced: bool
    speed: float | None = None
    cpu: float | None = None
    remaining: float | None = None


@dataclass(frozen=True)
class Decision:
    action: str  # SHED or BRING_BACK
    name: str
    reason: str


@dataclass
class _Record:
    shed_count: int = 0  # times shed again soon after coming back: the backoff exponent
    back_at: float | None = None


def real_time_need(cpu: float, speed: float | None, paced: bool) -> float:
    """The CPU a stream would use in real time: a slow one uses less than it needs."""
    if paced and speed is not None and speed < 1.0:
        return cpu / max(speed, SLOWEST)
    return cpu


def need(cpu: float | None) -> float:
    """Idle CPU (percent of a core) a stream needs before it is brought back."""
    use = UNKNOWN_NEED if cpu is None else cpu
    return use + max(MARGIN * use, MARGIN_MIN)


class Rule:
    """The rule and the little it remembers: since when each stream is slow, since
    when there is room, and each stream's backoff. ``after`` 0: never sheds."""

    def __init__(self, after: float) -> None:
        self.after = after
        self.settle = min(SETTLE, max(after, SETTLE_MIN))
        self._slow_since: dict[str, float] = {}
        self._room_since: float | None = None
        self._room_for: str | None = None
        self._last_change = float("-inf")
        self._records: dict[str, _Record] = {}

    def wait_for(self, name: str) -> float:
        """Seconds of room that ``name`` needs before it comes back (with its backoff)."""
        record = self._records.get(name)
        count = record.shed_count if record else 0
        return float(min(self.after * 2**count, max(BACKOFF_CAP, self.after)))

    def was_shed(self, name: str, count: int) -> None:
        """``name`` is shed already (adopted shed by a new daemon), ``count`` times running."""
        self._records.setdefault(name, _Record()).shed_count = count

    def shed_count(self, name: str) -> int:
        record = self._records.get(name)
        return record.shed_count if record else 0

    def decide(
        self,
        now: float,
        streams: Sequence[Seen],
        idle: float | None,
        capacity: float | None = None,
    ) -> Decision | None:
        """At most one decision for this moment; call it every second or so.

        ``capacity``: the CPU (percent of a core) the streams can have; with it, a shed
        follows the last change after ``QUICK`` seconds rather than ``settle`` while
        the streams' real-time needs say the victim will not fit (``cut``)."""
        if self.after <= 0:
            return None
        self._forget(s.name for s in streams)
        running = [s for s in streams if s.state == "running"]
        for s in streams:
            slow = s.state == "running" and s.paced and s.speed is not None
            if slow and s.speed is not None and s.speed < REAL_TIME:
                self._slow_since.setdefault(s.name, now)
            else:
                self._slow_since.pop(s.name, None)
        since = now - self._last_change
        if since < self.settle:
            self._room_since = None
            if capacity is None or since < QUICK:
                return None
            # Sooner while the figures say more must go: the victim is one a fit sheds.
            decision = self._shed(now, running, {s.name for s, _, _ in cut(running, capacity)})
        else:
            decision = self._shed(now, running) or self._bring_back(now, streams, idle)
        if decision is not None:
            self._last_change = now
            self._room_since = None
        return decision

    def fit(self, now: float, streams: Sequence[Seen], capacity: float) -> list[Decision]:
        """After a restore: shed at once what will not fit in ``capacity`` (percent of a
        core the streams can have), if a running real-time stream is slow (``cut``)."""
        if self.after <= 0:
            return []
        out = []
        for s, n, used in cut([s for s in streams if s.state == "running"], capacity):
            reason = (
                f"shed for lack of CPU after the restore: it needs about {n:.0f}% of a "
                f"core in real time, and the streams of higher or equal priority kept "
                f"need {used:.0f}% of the {capacity:.0f}% there is"
            )
            out.append(Decision(SHED, s.name, reason))
            self._records.setdefault(s.name, _Record())
        if out:
            self._last_change = now
            self._room_since = None
        return out

    def _forget(self, names: Iterable[str]) -> None:
        known = set(names)
        for memory in (self._slow_since, self._records):
            for name in [n for n in memory if n not in known]:
                del memory[name]

    def _shed(
        self, now: float, running: list[Seen], only: set[str] | None = None
    ) -> Decision | None:
        suffering = [
            s
            for s in running
            if s.name in self._slow_since and now - self._slow_since[s.name] >= self.after
        ]
        if not suffering:
            return None
        top = max(suffering, key=lambda s: (s.priority, -(s.speed or 0.0)))
        victims = [
            s
            for s in running
            if s.priority < top.priority and (s.cpu is None or s.cpu >= MIN_WORTH)
        ]
        if not victims:
            return None
        victim = min(victims, key=lambda s: (s.priority, -(s.cpu or 0.0), s.name))
        if only is not None and victim.name not in only:
            return None
        record = self._records.setdefault(victim.name, _Record())
        soon = record.back_at is not None and now - record.back_at < FORGIVE
        record.shed_count = record.shed_count + 1 if soon else 0
        uses = "" if victim.cpu is None else f" (it used {victim.cpu:.0f}% of a core)"
        reason = (
            f"shed for lack of CPU: {top.name} (priority {top.priority}) ran at "
            f"{top.speed:.2f}x, below real time, for {now - self._slow_since[top.name]:.0f}s"
            f"{uses}"
        )
        return Decision(SHED, victim.name, reason)

    def _bring_back(
        self, now: float, streams: Sequence[Seen], idle: float | None
    ) -> Decision | None:
        shed = [s for s in streams if s.state == SHED and (s.remaining is None or s.remaining > 0)]
        if not shed or idle is None or self._slow_since:
            self._room_since = None
            return None
        head = max(shed, key=lambda s: (s.priority, -need(s.cpu), s.name))
        if idle < need(head.cpu):
            self._room_since = None
            return None
        if self._room_since is None or self._room_for != head.name:
            self._room_since, self._room_for = now, head.name
        waited = now - self._room_since
        if waited < self.wait_for(head.name):
            return None
        self._records.setdefault(head.name, _Record()).back_at = now
        return Decision(
            BRING_BACK,
            head.name,
            f"brought back: {idle:.0f}% of a core idle for {waited:.0f}s, "
            f"it needs about {need(head.cpu):.0f}%",
        )


def cut(running: Sequence[Seen], capacity: float) -> list[tuple[Seen, float, float]]:
    """The running streams that do not fit in ``capacity``, with each one's need and what
    the streams kept before it need; none unless a real-time stream is slow.

    In priority order (the smallest need first among equals), streams are kept while
    their real-time needs fit; from the first that does not, every stream left is cut
    if its priority is below a slow stream's. The highest priority is always kept
    (equals are never shed for each other); a stream with no CPU figure yet is neither
    counted nor cut, nor one using under ``MIN_WORTH``.
    """
    slow = [s.priority for s in running if s.paced and s.speed is not None and s.speed < REAL_TIME]
    if not slow:
        return []
    top, highest = max(slow), max(s.priority for s in running)

    def need_of(s: Seen) -> float:
        return 0.0 if s.cpu is None else real_time_need(s.cpu, s.speed, s.paced)

    used, over, out = 0.0, False, []
    for s in sorted(running, key=lambda s: (-s.priority, need_of(s), s.name)):
        n = need_of(s)
        if s.cpu is None or s.priority == highest or (not over and used + n <= capacity):
            used += n
            continue
        over = True
        if s.priority < top and s.cpu >= MIN_WORTH:
            out.append((s, n, used))
    return out


def hold_back(
    candidates: Sequence[tuple[str, int, float | None]],
    *,
    top: int,
    used: float,
    capacity: float,
) -> dict[str, str]:
    """Which streams a restore leaves out, with the reason, from their last measured CPU.

    ``candidates``: (name, priority, CPU percent of a core or None) of the streams to
    start; ``top``: the highest priority among them and the running ones; ``used``: the
    CPU the running ones take; ``capacity``: what the host can give to streams. In
    priority order, a stream below ``top`` whose known use would take the total past
    ``capacity`` is held back; the top priority and streams never measured always start.
    """
    held: dict[str, str] = {}
    for name, priority, cpu in sorted(candidates, key=lambda c: (-c[1], c[0])):
        if cpu is not None and priority < top and used + cpu > capacity:
            held[name] = (
                f"held back for lack of CPU: it used {cpu:.0f}% of a core when it last ran, "
                f"{max(capacity - used, 0.0):.0f}% is left after higher priorities"
            )
            continue
        used += cpu or 0.0
    return held
