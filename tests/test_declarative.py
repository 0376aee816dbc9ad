"""Apply files, plans, shards and export: pure, in-process, no daemon."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from streamalchemy.apply import applier, declarative
from streamalchemy.apply.declarative import owner, parse, plan
from streamalchemy.core.saved import to_config
from streamalchemy.core.spec import StreamSpec
from streamalchemy.errors import InvalidInput, StreamExists
from streamalchemy.persist import new_entry

GOOD = """
[streams.cam1]
testsrc = true
resolution = 720
duration = "2h"
output = "null"
priority = 10

[streams.lobby]
url = "rtsp://${LOBBY_USER}:${LOBBY_PASS}@10.0.0.7/stream"
codec = "copy"
"""


def patterns(*names: str, extra: str = "") -> str:
    """An apply file of test patterns; ``extra`` goes into the last table."""
    return "".join(f"[streams.{n}]\ntestsrc = true\n" for n in names) + extra


def saved_of(specs: dict[str, StreamSpec]) -> dict[str, dict[str, Any]]:
    return {n: new_entry(to_config(s), 1000.0) for n, s in specs.items()}


def test_parse_uses_start_vocabulary() -> None:
    specs = parse(GOOD)
    assert specs["cam1"].resolution == 720 and specs["cam1"].duration == 7200
    assert specs["lobby"].source == "rtsp://${LOBBY_USER}:${LOBBY_PASS}@10.0.0.7/stream"
    assert specs["lobby"].codec == "copy" and specs["lobby"].resolution is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[streams.cam1\ntestsrc = true\n", "line 1"),
        (patterns("cam1", extra="colour = 'red'\n"), "line 3: stream 'cam1', key 'colour'"),
        (patterns("cam1", extra="resolution = 721\n"), "line 3: stream 'cam1', key 'resolution'"),
        ("[streams.c]\ntestsrc = true\nfile = '/x.mp4'\n", "stream 'c', key 'file'"),
        ("[streams.c]\ntestsrc = true\nduration = 'soon'\n", "line 3: stream 'c', key 'duration'"),
        ("[streams.c]\nurl = 'rtsp://h/x'\ncodec='copy'\nfps = 5\n", "line 4: stream 'c'"),
        ("[streams.'bad name']\ntestsrc = true\n", "stream 'bad name'"),
        ("[stream.c]\ntestsrc = true\n", "unknown top-level key 'stream'"),
        ("[streams.c]\ncodec = 'h264'\n", "stream 'c'"),
    ],
)
def test_invalid_file_names_stream_key_and_line(text: str, needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse(text, origin="f.toml")
    message = str(err.value)
    assert needle in message and "\n" not in message and message.startswith("f.toml: ")


def test_relative_paths_resolve_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    specs = parse("[streams.a]\nfile = 'clip.mp4'\noutput = 'out/a.ts'\n", base_dir=tmp_path)
    assert specs["a"].source == str(tmp_path / "clip.mp4")
    assert specs["a"].output == str(tmp_path / "out/a.ts")


def test_normalised_values_compare_equal() -> None:
    a = parse("[streams.a]\ntestsrc = true\nresolution = 720\nduration = '2h'\n")
    b = parse("[streams.a]\ntestsrc = true\nresolution = '720'\nduration = '120m'\n")
    steps = plan(b, declarative.current_specs(saved_of(a), {}))
    assert [(s.action, s.changes) for s in steps] == [("unchanged", {})]


def test_plan_create_update_unchanged_delete() -> None:
    old = parse(patterns("a", "b", "c"))
    new = parse(patterns("a", "d", "b", extra="fps = 5\n"))
    current = declarative.current_specs(saved_of(old), {})
    steps = {s.name: s for s in plan(new, current)}
    assert {n: s.action for n, s in steps.items()} == {
        "a": "unchanged",
        "b": "update",
        "d": "create",
    }
    assert steps["b"].changes == {"fps": ["source", 5]}
    pruned = {s.name: s.action for s in plan(new, current, prune=True)}
    assert pruned["c"] == "delete"
    limited = {s.name: s.action for s in plan(new, current, prune=True, prune_only={"x"})}
    assert "c" not in limited


def test_changes_mask_literal_secrets_and_keep_references() -> None:
    old = parse("[streams.a]\nurl = 'rtsp://u:hunter2@h/x'\n")
    new = parse("[streams.a]\nurl = 'rtsp://${U}:${P}@h/x'\n")
    (step,) = plan(new, declarative.current_specs(saved_of(old), {}))
    assert step.changes == {"url": ["rtsp://***:***@h/x", "rtsp://${U}:${P}@h/x"]}
    assert "hunter2" not in str(step.as_dict())


def test_rendezvous_hash_is_the_contracts() -> None:
    import hashlib

    def by_hand(name: str, n: int) -> int:
        scores = [
            int.from_bytes(hashlib.sha256(f"{i}:{name}".encode()).digest()[:8], "big")
            for i in range(n)
        ]
        return scores.index(max(scores))

    names = [f"cam{i}" for i in range(200)]
    assert all(owner(n, 5) == by_hand(n, 5) for n in names)
    counts = collections.Counter(owner(n, 4) for n in names)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 30


def test_adding_a_shard_moves_only_what_it_wins() -> None:
    names = [f"cam{i}" for i in range(12)]
    before = {n: owner(n, 3) for n in names}
    after = {n: owner(n, 4) for n in names}
    moved = {n for n in names if before[n] != after[n]}
    assert moved == {n for n in names if after[n] == 3}
    # Each stream runs on exactly one shard: the union of shard plans covers the file once.
    desired = parse("".join(f"[streams.{n}]\ntestsrc=true\n" for n in names))
    runs = collections.Counter()
    for i in range(3):
        for s in plan(desired, {}, shard=(i, 3)):
            if s.action == "create":
                runs[s.name] += 1
    assert runs == dict.fromkeys(names, 1)


def test_shard_moves_delete_only_with_prune() -> None:
    names = [f"cam{i}" for i in range(12)]
    desired = parse("".join(f"[streams.{n}]\ntestsrc=true\n" for n in names))
    mine = {n: s for n, s in desired.items() if owner(n, 3) == 0}
    current = declarative.current_specs(saved_of(mine), {})
    lost = {n for n in mine if owner(n, 4) != 0}
    assert lost, "the fourth shard wins some of shard 0's streams"
    kept = {s.name: s.action for s in plan(desired, current, shard=(0, 4))}
    assert all(kept[n] == "other-shard" for n in lost)
    pruned = {s.name: s.action for s in plan(desired, current, shard=(0, 4), prune=True)}
    assert {n for n, a in pruned.items() if a == "delete"} == lost


@pytest.mark.parametrize("text", ["1", "3/3", "-1/2", "a/b", "1/0"])
def test_parse_shard_refuses(text: str) -> None:
    with pytest.raises(InvalidInput):
        declarative.parse_shard(text)


def test_auto_shard() -> None:
    assert declarative.auto_shard("streamalchemy-3", 5) == (3, 5)
    for host, shards in (("streamalchemy-3", None), ("box", 3), ("streamalchemy-3", 3)):
        with pytest.raises(InvalidInput):
            declarative.auto_shard(host, shards)


def test_export_round_trip() -> None:
    specs = parse(
        GOOD
        + "[streams.secret]\nurl = 'rtsp://u:hunter2@h/x?token=abc'\n"
        + "[streams.long]\ntestsrc = true\nduration = 1.51\nhwaccel = 'auto'\naudio = 'aac'\n"
    )
    saved = saved_of(specs)
    text = declarative.export_toml(declarative.export_tables(saved, include_secrets=True))
    back = parse(text)
    assert back == specs
    steps = plan(back, declarative.current_specs(saved, {}), prune=True)
    assert {s.action for s in steps} == {"unchanged"}
    masked = declarative.export_toml(declarative.export_tables(saved))
    assert "hunter2" not in masked and "token=abc" not in masked and "${LOBBY_PASS}" in masked


def test_duration_text_round_trips() -> None:
    for seconds in (0, 45, 90, 3600, 5400, 5437, 86400 * 3):
        text = declarative.duration_text(seconds)
        assert parse(f"[streams.a]\ntestsrc=true\nduration='{text}'\n")["a"].duration == seconds


class FakeDaemon:
    """Records what an apply asks of the daemon; fails to start the names in ``fail``."""

    def __init__(
        self,
        fail: Collection[str] = (),
        saved: dict[str, dict[str, Any]] | None = None,
        running: dict[str, StreamSpec] | None = None,
    ) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = set(fail)
        self._saved = saved or {}
        self.ops = applier.Ops(self.start, self.stop, self.saved, lambda: running or {})

    async def start(self, spec: StreamSpec, replace: bool) -> None:
        self.calls.append(("replace" if replace else "start", spec.name))
        if spec.name in self.fail:
            raise StreamExists(f"stream {spec.name!r} already exists")

    async def stop(self, name: str) -> None:
        self.calls.append(("stop", name))

    async def saved(self) -> dict[str, dict[str, Any]]:
        return self._saved


def test_execute_goes_through_the_lifecycle() -> None:
    old = parse(patterns("a", "b", "c"))
    new = parse(patterns("a", "d", "b", extra="fps = 5\n"))
    fake = FakeDaemon(fail={"d"}, saved=saved_of(old), running=old)
    doc = asyncio.run(applier.apply(new, fake.ops, prune=True))
    assert doc["success"] is False and doc["dry_run"] is False
    results = {s["name"]: (s["action"], s["result"]) for s in doc["plan"]}
    assert results == {
        "a": ("unchanged", "done"),
        "b": ("update", "done"),
        "c": ("delete", "done"),
        "d": ("create", "failed"),
    }
    assert fake.calls[0] == ("stop", "c")
    assert sorted(fake.calls[1:]) == [("replace", "b"), ("start", "d")]

    dry = FakeDaemon()
    doc = asyncio.run(applier.apply(new, dry.ops, dry_run=True))
    assert dry.calls == [] and {s["result"] for s in doc["plan"]} == {"planned"}


def test_file_applier_sees_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """Mimic Kubernetes: dir/..data -> ..v1, streams.toml -> ..data/streams.toml."""
    cm = tmp_path / "cm"
    cm.mkdir()

    def publish(version: str, text: str) -> None:
        (cm / version).mkdir()
        (cm / version / "streams.toml").write_text(text)
        tmp_link = cm / "..data_tmp"
        tmp_link.symlink_to(version)
        tmp_link.rename(cm / "..data")  # atomic, as kubelet does

    publish("..v1", "[streams.a]\ntestsrc=true\n[streams.b]\ntestsrc=true\n")
    (cm / "streams.toml").symlink_to("..data/streams.toml")
    seen: list[tuple[set[str], set[str]]] = []

    async def apply_fn(
        desired: dict[str, StreamSpec], before: set[str], held: dict[str, str]
    ) -> dict[str, Any]:
        seen.append((set(desired), before))
        steps = plan(desired, {})
        return declarative.document(steps, False)

    record = applier.AppliedRecord(tmp_path / "applied.json")
    watch = applier.FileApplier(cm / "streams.toml", record, apply_fn)

    async def scenario() -> None:
        assert await watch.apply_now() is None  # a first look: applied once the next agrees
        assert await watch.apply_now() is not None
        assert await watch.apply_now() is None  # nothing changed
        publish("..v2", "[streams.a]\ntestsrc=true\n")
        assert await watch.apply_now() is None
        assert await watch.apply_now() is not None
        publish("..v3", "[streams.a]\ntestsrc=\n")  # invalid: logged, nothing applied
        assert await watch.apply_now() is None
        assert await watch.apply_now() is None

    asyncio.run(scenario())
    assert seen == [({"a", "b"}, set()), ({"a"}, {"a", "b"})]
    assert record.load() == {"a"}


def test_prune_first_drops_only_lost_streams_from_the_file(tmp_path: Path) -> None:
    """Before the launch restore: a stream FILE brought that moved shard is stopped;
    one started by hand, or still ours, stays."""
    names = [f"cam{i}" for i in range(12)]
    path = tmp_path / "s.toml"
    path.write_text(patterns(*names))
    desired = parse(path.read_text())
    mine = {n: s for n, s in desired.items() if owner(n, 3) == 0}
    record = applier.AppliedRecord(tmp_path / "applied.json")
    record.save(path, set(mine))
    hand = parse(patterns("hand"))
    watch = applier.FileApplier(path, record, None)  # type: ignore[arg-type]
    fake = FakeDaemon(saved=saved_of({**mine, **hand}))
    dropped = asyncio.run(watch.prune_first(fake.ops, (0, 4)))
    lost = {n for n in mine if owner(n, 4) != 0}
    assert set(dropped) == lost and {c for _, c in fake.calls} == lost
    assert record.load() == set(mine) - lost


def test_file_applier_retries_failed_steps_later(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(patterns("a"))
    now = [0.0]
    fake = FakeDaemon(fail={"a"})

    async def apply_fn(
        desired: dict[str, StreamSpec], before: set[str], held: dict[str, str]
    ) -> dict[str, Any]:
        return await applier.apply(desired, fake.ops)

    watch = applier.FileApplier(
        path, applier.AppliedRecord(tmp_path / "r.json"), apply_fn, clock=lambda: now[0]
    )

    async def scenario() -> None:
        assert await watch.apply_now() is None  # the first look
        assert (await watch.apply_now() or {}).get("success") is False
        assert await watch.apply_now() is None  # not yet
        now[0] += applier.RETRY_FAILED
        assert (await watch.apply_now() or {}).get("success") is False
        now[0] += applier.RETRY_FAILED
        assert await watch.apply_now() is None  # it failed twice: the wait doubled
        now[0] += applier.RETRY_FAILED
        fake.fail.clear()
        assert (await watch.apply_now() or {}).get("success") is True
        now[0] += applier.RETRY_MAX
        assert await watch.apply_now() is None  # nothing failed, nothing changed

    asyncio.run(scenario())
    assert fake.calls == [("start", "a")] * 3


def test_a_masked_export_applied_keeps_the_saved_secrets() -> None:
    specs = parse(
        '[streams.cam]\nurl = "rtsp://cam:Kq\'7 Zt\\"9w@h/x?token=abc123"\n'
        "[streams.ref]\nurl = 'rtsp://admin:${CAM_PW}@h/y'\n"
        "[streams.key]\ntestsrc = true\noutput = 'rtmp://h/live/StreamKey9'\n"
    )
    saved = saved_of(specs)
    masked = declarative.export_toml(declarative.export_tables(saved))
    assert "Kq'7" not in masked and "StreamKey9" not in masked and "abc123" not in masked
    assert "rtsp://admin:${CAM_PW}@h/y" in masked  # a reference exactly as written
    steps = plan(parse(masked), declarative.current_specs(saved, {}))
    assert [(s.action, s.spec) for s in steps] == [("unchanged", specs[s.name]) for s in steps]


@pytest.mark.parametrize(
    "table",
    [
        "[streams.new]\nurl = 'rtsp://***:***@h/x'\n",  # no saved secret to keep
        "[streams.cam]\nurl = 'rtsp://***:***@other/x'\n",  # the URL changed around it
    ],
)
def test_a_masked_secret_that_cannot_be_kept_is_refused(table: str) -> None:
    saved = saved_of(parse("[streams.cam]\nurl = 'rtsp://u:hunter2@h/x'\n"))
    with pytest.raises(InvalidInput, match=r"--include-secrets") as err:
        plan(parse(table), declarative.current_specs(saved, {}))
    assert err.value.exit_code == 2 and "${NAME}" in str(err.value)
