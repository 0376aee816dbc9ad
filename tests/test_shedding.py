"""The shedding rule in-process: scripted figures, a clock that is a number, no daemon.

Seconds and percent of one core throughout. The host has two cores (200% when idle).
"""

from __future__ import annotations

from collections.abc import Sequence

from streamalchemy.server.shedding import (
    BACKOFF_CAP,
    BRING_BACK,
    QUICK,
    SETTLE,
    SHED,
    Decision,
    Rule,
    Seen,
    hold_back,
    need,
    real_time_need,
)
from streamalchemy.supervision.pace import HostIdle, Window

AFTER = 20.0


def running(name: str, priority: int, speed: float | None = 1.0, cpu: float = 50.0) -> Seen:
    return Seen(name, priority, "running", paced=True, speed=speed, cpu=cpu)


def shed(
    name: str, priority: int, cpu: float | None = 50.0, remaining: float | None = None
) -> Seen:
    return Seen(name, priority, "shed", paced=True, cpu=cpu, remaining=remaining)


class Script:
    """Calls the rule once a second, as the daemon does, and keeps every decision."""

    def __init__(self, after: float = AFTER) -> None:
        self.rule = Rule(after)
        self.now = 0.0
        self.decisions: list[tuple[float, Decision]] = []

    def run(self, seconds: int, streams: Sequence[Seen], idle: float | None = 0.0) -> None:
        for _ in range(seconds):
            self.now += 1
            decision = self.rule.decide(self.now, streams, idle)
            if decision is not None:
                self.decisions.append((self.now, decision))

    def actions(self) -> list[tuple[str, str]]:
        return [(d.action, d.name) for _, d in self.decisions]


def test_a_slow_stream_sheds_the_lowest_priority_after_shed_after_seconds() -> None:
    s = Script()
    figures = [running("top", 10, speed=0.8), running("low", 0), running("mid", 5)]
    s.run(int(AFTER) - 1, figures)
    assert s.decisions == []
    s.run(2, figures)
    assert s.actions() == [(SHED, "low")]
    reason = s.decisions[0][1].reason
    assert "lack of CPU" in reason and "top" in reason and "0.80x" in reason


def test_equal_priorities_are_never_shed_for_each_other() -> None:
    s = Script()
    s.run(600, [running("a", 0, speed=0.5), running("b", 0, speed=0.6), running("c", 0)])
    assert s.decisions == []


def test_the_largest_cpu_user_goes_first_among_equal_lowest_priorities() -> None:
    s = Script()
    figures = [
        running("top", 1, speed=0.7),
        running("small", 0, cpu=20.0),
        running("big", 0, cpu=90.0),
        running("idle-relay", -1, cpu=0.5),  # a copy relay frees nothing: never worth a stop
    ]
    s.run(int(AFTER) + 1, figures)
    assert s.actions() == [(SHED, "big")]


def test_one_at_a_time_until_the_top_is_back_in_real_time() -> None:
    s = Script()
    low = [running("a", 0), running("b", 0), running("c", 0)]
    s.run(int(AFTER) + 1, [running("top", 1, speed=0.6), *low])
    assert s.actions() == [(SHED, "a")]
    s.run(int(SETTLE) - 1, [running("top", 1, speed=0.7), *low[1:]])
    assert len(s.decisions) == 1  # its effect shows before the next decision
    s.run(2, [running("top", 1, speed=0.8), *low[1:]])
    assert s.actions() == [(SHED, "a"), (SHED, "b")]
    s.run(300, [running("top", 1, speed=1.0), low[2], shed("a", 0), shed("b", 0)], idle=5.0)
    assert len(s.decisions) == 2  # back in real time, and no room: nothing more


def test_a_url_source_never_suffers_but_can_be_shed() -> None:
    s = Script()
    url = Seen("cam", 5, "running", paced=False, speed=0.5, cpu=40.0)
    s.run(100, [url, running("low", 0)])
    assert s.decisions == []
    s.run(int(AFTER) + 1, [running("top", 9, speed=0.5), Seen("cam", 5, "running", False, 1.0, 40)])
    assert s.actions() == [(SHED, "cam")]


def test_an_unknown_speed_is_not_a_slow_one() -> None:
    s = Script()
    s.run(100, [running("top", 1, speed=None), running("low", 0)])
    assert s.decisions == []


def test_a_shed_stream_comes_back_after_room_for_it_lasts_shed_after_seconds() -> None:
    s = Script()
    figures = [running("top", 1), shed("low", 0, cpu=60.0)]
    s.run(600, figures, idle=need(60.0) - 1)
    assert s.decisions == []  # its use plus the margin is not there
    s.run(int(AFTER) - 1, figures, idle=need(60.0) + 1)
    assert s.decisions == []
    s.run(2, figures, idle=need(60.0) + 1)
    assert s.actions() == [(BRING_BACK, "low")]


def test_no_bring_back_while_a_running_stream_is_slow() -> None:
    s = Script()
    s.run(200, [running("top", 1, speed=0.9), shed("low", 0, cpu=10.0)], idle=150.0)
    assert s.decisions == []


def test_the_highest_priority_comes_back_first_and_is_never_overtaken() -> None:
    s = Script()
    figures = [running("top", 9), shed("mid", 5, cpu=120.0), shed("low", 0, cpu=10.0)]
    s.run(300, figures, idle=100.0)  # room for low, not for mid: low waits
    assert s.decisions == []
    s.run(int(AFTER) + 1, figures, idle=160.0)
    assert s.actions() == [(BRING_BACK, "mid")]


def test_shed_again_soon_after_coming_back_waits_twice_as_long() -> None:
    s = Script()
    s.run(int(AFTER) + 1, [running("top", 1, speed=0.7), running("low", 0)])
    s.run(int(AFTER) + int(SETTLE), [running("top", 1), shed("low", 0)], idle=150.0)
    assert s.actions() == [(SHED, "low"), (BRING_BACK, "low")]
    assert s.rule.wait_for("low") == AFTER
    s.run(int(AFTER) + int(SETTLE), [running("top", 1, speed=0.7), running("low", 0)])
    assert s.actions()[-1] == (SHED, "low")
    assert s.rule.wait_for("low") == 2 * AFTER
    first_room = s.now
    s.run(int(3 * AFTER), [running("top", 1), shed("low", 0)], idle=150.0)
    back_at = s.decisions[-1][0]
    assert s.actions()[-1] == (BRING_BACK, "low")
    assert back_at - first_room >= 2 * AFTER
    for _ in range(10):  # the backoff has a cap
        s.rule.was_shed("low", s.rule.shed_count("low") + 1)
    assert s.rule.wait_for("low") == BACKOFF_CAP


def test_a_shed_stream_at_its_deadline_is_not_brought_back() -> None:
    s = Script()
    s.run(300, [running("top", 1), shed("low", 0, remaining=0.0)], idle=190.0)
    assert s.decisions == []


def test_a_stopped_stream_is_forgotten_with_its_backoff() -> None:
    s = Script()
    s.rule.was_shed("low", 3)
    s.run(5, [running("top", 1)])  # "low" was stopped by the user
    assert s.rule.wait_for("low") == AFTER
    s.run(int(AFTER) + 1, [running("top", 1), shed("low", 0)], idle=150.0)
    assert s.actions() == [(BRING_BACK, "low")]


def test_shed_after_zero_never_sheds() -> None:
    s = Script(after=0)
    s.run(600, [running("top", 9, speed=0.2), running("low", 0)])
    s.run(600, [running("top", 9), shed("low", 0)], idle=200.0)
    assert s.decisions == []


# -- a restore on a machine that cannot run everything ------------------------------


def test_restore_holds_back_what_will_not_fit_below_the_top_priority() -> None:
    candidates = [("top", 9, 120.0), ("a", 0, 50.0), ("b", 0, 30.0), ("new", 0, None)]
    held = hold_back(candidates, top=9, used=0.0, capacity=180.0)
    # In name order among equals: a fits beside top, b does not; "new" was never
    # measured: it starts, and the rule judges it once it runs.
    assert set(held) == {"b"}
    assert "held back for lack of CPU" in held["b"] and "30%" in held["b"]


def test_restore_never_holds_back_the_top_priority_nor_equals() -> None:
    candidates = [("a", 0, 150.0), ("b", 0, 150.0), ("c", 0, 150.0)]
    assert hold_back(candidates, top=0, used=0.0, capacity=180.0) == {}
    assert hold_back([("x", 5, 500.0)], top=5, used=170.0, capacity=180.0) == {}


def test_restore_counts_what_already_runs() -> None:
    assert set(hold_back([("low", 0, 40.0)], top=3, used=150.0, capacity=180.0)) == {"low"}


# -- the signal ----------------------------------------------------------------------


def test_recent_speed_is_the_slope_over_the_window_not_the_average_since_start() -> None:
    pace = Window(span=10.0, min_span=4.0)
    for t in range(0, 100, 2):  # a long slow past at 0.5x
        pace.add(float(t), t * 0.5)
    assert pace.rate() == 0.5
    base = 99 * 0.5
    for t in range(100, 112, 2):  # then real time again
        pace.add(float(t), base + (t - 99))
    rate = pace.rate()
    assert rate is not None and abs(rate - 1.0) < 0.05


def test_recent_speed_averages_out_when_reports_are_seen_late() -> None:
    pace = Window(span=10.0, min_span=4.0)
    lateness = [0.0, 0.9, 0.2, 0.7, 0.4, 0.0, 0.8]
    for i, late in enumerate(lateness):
        pace.add(2.0 * i + late, 2.0 * i)
    rate = pace.rate()
    assert rate is not None and abs(rate - 1.0) < 0.1


def test_recent_speed_starts_again_with_a_new_ffmpeg_and_needs_a_few_seconds() -> None:
    pace = Window(span=10.0, min_span=4.0)
    for t in range(10):
        pace.add(float(t), float(t))
    pace.add(10.0, 0.0)  # a new FFmpeg counts from zero
    assert pace.rate() is None
    pace.add(12.0, 2.0)
    assert pace.rate() is None  # two seconds of samples: not enough to judge
    pace.add(15.0, 5.0)
    assert pace.rate() == 1.0


def test_host_idle_is_in_percent_of_one_core() -> None:
    host = HostIdle(cores=2, span=10.0)
    hz = 100  # the kernel's ticks per second on Linux
    idle = total = 0
    for _ in range(6):
        host.add(idle, total)
        idle += int(1.5 * hz)  # 1.5 of 2 cores idle, each second
        total += 2 * hz
    assert host.percent() == 150.0


def test_a_slow_stream_needs_more_cpu_than_it_uses() -> None:
    assert real_time_need(50.0, 0.5, paced=True) == 100.0
    assert real_time_need(50.0, 1.2, paced=True) == 50.0
    assert real_time_need(50.0, 0.5, paced=False) == 50.0
    assert real_time_need(10.0, 0.05, paced=True) == 50.0  # a crawl counts as 0.2x


def test_after_a_restore_what_will_not_fit_is_shed_at_once_lowest_first() -> None:
    rule = Rule(AFTER)
    figures = [
        running("top", 10, speed=0.5, cpu=20.0),  # needs 40
        running("mid-a", 5, speed=0.5, cpu=20.0),  # 40
        running("mid-b", 5, speed=0.5, cpu=30.0),  # 60
        running("low-a", 0, speed=0.5, cpu=20.0),  # 40
        running("low-b", 0, speed=0.5, cpu=20.0),  # 40
    ]
    decisions = rule.fit(0.0, figures, capacity=180.0)
    # 40 + 40 + 60 = 140 fit; low-a would make 180 fit too; low-b does not.
    assert [(d.action, d.name) for d in decisions] == [(SHED, "low-b")]
    assert "lack of CPU" in decisions[0].reason
    decisions = Rule(AFTER).fit(0.0, figures, capacity=120.0)
    assert [d.name for d in decisions] == ["mid-b", "low-a", "low-b"]  # in one step


def test_fit_keeps_the_highest_priority_whole_and_sheds_nothing_among_equals() -> None:
    rule = Rule(AFTER)
    equals = [running(f"s{i}", 0, speed=0.4, cpu=40.0) for i in range(10)]
    assert rule.fit(0.0, equals, capacity=180.0) == []
    tops = [running(f"t{i}", 10, speed=0.4, cpu=40.0) for i in range(6)]
    decisions = rule.fit(0.0, [*tops, running("low", 0, speed=0.4)], capacity=180.0)
    assert [d.name for d in decisions] == ["low"]  # the top group does not fit either


def test_fit_needs_a_slow_stream_and_skips_streams_without_figures() -> None:
    rule = Rule(AFTER)
    in_time = [running("top", 10, cpu=150.0), running("low", 0, cpu=150.0)]
    assert rule.fit(0.0, in_time, capacity=180.0) == []  # nobody suffers
    unknown = Seen("new", 0, "running", paced=True, speed=None, cpu=None)
    figures = [running("top", 10, speed=0.5, cpu=80.0), unknown, running("low", 0, speed=0.5)]
    assert [d.name for d in rule.fit(0.0, figures, capacity=180.0)] == ["low"]
    assert Rule(0).fit(0.0, figures, capacity=180.0) == []  # SHED_AFTER=0: never


def test_after_fit_the_rule_waits_settle_seconds_before_its_next_change() -> None:
    s = Script(after=5)
    top = running("top", 10, speed=0.5, cpu=100.0)
    s.run(4, [top, running("low-a", 0, speed=0.5), running("low-b", 0, speed=0.5, cpu=60.0)])
    assert [
        d.name
        for d in s.rule.fit(
            s.now,
            [top, running("low-a", 0, speed=0.5), running("low-b", 0, speed=0.5, cpu=60.0)],
            capacity=310.0,
        )
    ] == ["low-b"]
    after_fit = [top, running("low-a", 0, speed=0.5), shed("low-b", 0)]
    s.run(4, after_fit)  # top has been slow long enough, but the fit was a change
    assert s.decisions == []
    s.run(1, after_fit)
    assert s.actions() == [(SHED, "low-a")]


def test_settle_follows_shed_after_between_bounds() -> None:
    assert Rule(20).settle == SETTLE
    assert Rule(5).settle == 5.0
    assert Rule(1).settle == 3.0


def test_sheds_follow_quickly_while_the_needs_say_more_must_go() -> None:
    s = Script()
    top = running("top", 10, speed=0.5, cpu=30.0)  # needs 60
    lows = [running(f"low{i}", 0, speed=0.5, cpu=30.0 + i) for i in range(6)]  # ~60 each
    figures = [top, *lows]
    for _ in range(int(AFTER) + 12):
        s.now += 1
        decision = s.rule.decide(s.now, figures, 0.0, capacity=190.0)
        if decision is not None:
            s.decisions.append((s.now, decision))
            figures = [f if f.name != decision.name else shed(f.name, 0) for f in figures]
    times = [t for t, _ in s.decisions]
    # 60 for the top; low0 and low1 fit in 190 (182): four go, the largest first, QUICK apart.
    assert [d.name for _, d in s.decisions] == ["low5", "low4", "low3", "low2"]
    first = AFTER + 1  # slow from the first second on
    assert times == [first, first + QUICK, first + 2 * QUICK, first + 3 * QUICK]


def test_once_the_needs_fit_the_next_shed_waits_settle_seconds() -> None:
    s = Script()
    figures = [running("top", 10, speed=0.8, cpu=40.0), running("low", 0, speed=0.8)]
    s.run(int(AFTER) + 1, figures, idle=0.0)  # slow from the first second on
    assert s.actions() == [(SHED, "low")]
    figures = [figures[0], shed("low", 0), running("other", 0, speed=0.8, cpu=20.0)]
    for _ in range(int(SETTLE) - 1):  # 50 + 25 fit in 180: not a quick one
        s.now += 1
        assert s.rule.decide(s.now, figures, 0.0, capacity=180.0) is None
    s.now += 1
    assert s.rule.decide(s.now, figures, 0.0, capacity=180.0) is not None
