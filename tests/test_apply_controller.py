"""An apply through the controller, in-process: serialised with start and stop on a name.

Reuses the fake supervisor of tests/test_controller.py: no FFmpeg, no socket.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fakes import make_controller, saved

from streamalchemy.apply import applier, declarative
from streamalchemy.server import routes

CHEAP = 'testsrc = true\noutput = "null"\n'


def body(text: str, **options: Any) -> dict[str, Any]:
    specs = declarative.parse(text)
    streams = {n: declarative.table_of(s) for n, s in specs.items()}
    return {"streams": streams, **options}


def test_an_apply_and_a_stop_on_one_name_each_wait_their_turn(tmp_path: Path) -> None:
    c, fake = make_controller(tmp_path, delay=0.05)

    async def scenario() -> tuple[Any, Any]:
        applying = asyncio.create_task(
            routes.handle(
                c, "POST", "/apply", {}, body(f"[streams.a]\n{CHEAP}[streams.b]\n{CHEAP}")
            )
        )
        await asyncio.sleep(0.01)  # the apply owns 'a' and is confirming its FFmpeg
        stopped = await routes.handle(c, "POST", "/stop", {}, {"names": ["a"]})
        return await applying, stopped

    try:
        (status, doc), (stop_status, stop_doc) = asyncio.run(scenario())
    finally:
        c.writer.close()
    assert status == 200 and doc["success"], doc
    assert stop_status == 200 and stop_doc["stopped"] == ["a"]
    assert fake.running() == {"b"} and saved(tmp_path) == {"b"}


def test_a_start_meeting_an_apply_finds_it_done_and_updates_keep_the_deadline(
    tmp_path: Path,
) -> None:
    c, fake = make_controller(tmp_path, delay=0.05)
    text = f"[streams.a]\n{CHEAP}"

    async def scenario() -> dict[str, Any]:
        ops = c.apply_ops()
        desired = declarative.parse(text)
        started = asyncio.create_task(c.start_spec(desired["a"]))
        await asyncio.sleep(0.01)
        # Planned as a create before the start finished: it waits, then finds 'a' as wanted.
        doc = await applier.apply(desired, ops)
        await started
        assert fake.launched == ["a"] and doc["success"]
        first = c.supervisor.streams["a"].saved_at
        await asyncio.sleep(0.02)
        doc = await applier.apply(declarative.parse(text + "fps = 5\n"), ops)
        assert [s["action"] for s in doc["plan"]] == ["update"]
        assert c.supervisor.streams["a"].saved_at == first  # the deadline is kept
        return doc

    try:
        asyncio.run(scenario())
    finally:
        c.writer.close()
    assert fake.launched == ["a", "a"] and saved(tmp_path) == {"a"}
