"""The restore plan, pure: order, expiry by the one deadline rule, what is kept running."""

from __future__ import annotations

from fakes import pattern_config

from streamalchemy.core.restore import plan
from streamalchemy.core.saved import deadline, expired


def entry(saved_at: float, **extra: str) -> dict[str, object]:
    config = pattern_config(**extra)
    return {"config": config, "saved_at": saved_at, "status": "active"}


def test_plan_orders_by_priority() -> None:
    entries = {
        "low": entry(1000.0, priority="-1"),
        "high": entry(1000.0, priority="10"),
        "mid": entry(1000.0),
    }
    steps = plan(entries, running=set(), choose_encoder=lambda s: "libx264", now=1000.0)
    assert [s.name for s in steps] == ["high", "mid", "low"]


def test_restore_skips_an_expired_stream_and_keeps_one_within_its_duration() -> None:
    entries = {"over": entry(1000.0, duration_hours="1"), "left": entry(1000.0, duration_hours="2")}
    now = 1000.0 + 3600 + 60
    steps = {s.name: s for s in plan(entries, running=set(), choose_encoder=lambda s: "x", now=now)}
    assert steps["over"].result == "skipped" and steps["over"].expired
    assert "ended 1m ago" in steps["over"].reason
    assert steps["left"].result == "restored" and steps["left"].saved_at == 1000.0


def test_running_streams_are_skipped() -> None:
    steps = plan({"a": entry(1.0)}, running={"a"}, choose_encoder=lambda s: "x", now=2.0)
    assert [(s.result, s.reason) for s in steps] == [("skipped", "already running")]


def test_the_deadline_rule() -> None:
    assert deadline(100.0, 0.0) is None and not expired(100.0, 0.0, 10.0**9)
    assert deadline(100.0, 60.0) == 160.0
    assert not expired(100.0, 60.0, 159.9) and expired(100.0, 60.0, 160.0)
