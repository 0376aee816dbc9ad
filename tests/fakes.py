"""The fakes of the in-process tests: a supervisor whose streams confirm on cue, an
encoder chooser, and a controller built from them by ``Controller.from_settings``.

No FFmpeg, no socket. Test modules import their fakes from here, never from each other.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from streamalchemy.core.saved import to_config
from streamalchemy.core.spec import StreamSpec, spec_from_request
from streamalchemy.persist import new_entry
from streamalchemy.server.controller import Controller
from streamalchemy.settings import load_settings

T = TypeVar("T")
_pids = itertools.count(1000)


class FakeStream:
    """A stream whose FFmpeg confirms (or fails) after ``delay`` seconds."""

    def __init__(self, spec: StreamSpec, saved_at: float, encoder: str, delay: float) -> None:
        self.spec, self.saved_at, self.encoder = spec, saved_at, encoder
        self.status = "starting"
        self.pid: int | None = next(_pids)
        self.last_error: str | None = None
        self.delay = delay
        self.fail: str | None = None
        self.gate: asyncio.Event | None = None
        self.exits: collections.deque[dict[str, Any]] = collections.deque()

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running")

    async def confirmed(self, window: float) -> str | None:
        await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.status, self.last_error = "failed", self.fail
            return self.fail
        if self.status == "starting":
            self.status = "running"
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.spec.name, "status": self.status, "pid": self.pid}


class FakeSupervisor:
    """Records every launch; fails the test at once if a name gets a second live process."""

    def __init__(self, log_dir: Path, delay: float = 0.01) -> None:
        self.streams: dict[str, FakeStream] = {}
        self.ended: dict[str, FakeStream] = {}  # as Supervisor.ended: finished, unlisted
        self.launched: list[str] = []
        self.live: list[FakeStream] = []
        self.delay = delay
        self.fail: dict[str, str] = {}
        self.gates: dict[str, asyncio.Event] = {}  # names whose confirmation waits for a set()
        self.notes: list[tuple[str, str]] = []
        self.log_dir = log_dir

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def launch(self, spec: StreamSpec, *, saved_at: float, encoder: str, **_: Any) -> FakeStream:
        twins = [s for s in self.live if s.spec.name == spec.name]
        assert not twins, f"a second process for {spec.name}"
        stream = FakeStream(spec, saved_at, encoder, self.delay)
        stream.fail = self.fail.get(spec.name)
        stream.gate = self.gates.get(spec.name)
        self.streams[spec.name] = stream
        self.launched.append(spec.name)
        self.live.append(stream)
        return stream

    async def stop(self, name: str, reason: str = "stopped by the user") -> None:
        stream = self.streams.pop(name)
        await asyncio.sleep(0.001)
        stream.status, stream.pid = "stopped", None
        if stream in self.live:
            self.live.remove(stream)

    async def stop_all(self) -> None:
        for name in list(self.streams):
            await self.stop(name)

    def note(self, name: str, text: str) -> None:
        self.notes.append((name, text))

    def running(self) -> set[str]:
        return {s.spec.name for s in self.live}


class FakeChooser:
    def __call__(self, spec: StreamSpec) -> str:
        return "copy" if spec.codec == "copy" else "libx264"

    async def ready(self) -> None:
        return None

    async def choose_async(self, spec: StreamSpec) -> str:
        return self(spec)


def make_controller(home: Path, delay: float = 0.01) -> tuple[Controller, FakeSupervisor]:
    settings = load_settings(env={"STREAMALCHEMY_HOME": str(home), "STREAMALCHEMY_MEDIAMTX": "off"})
    fake = FakeSupervisor(home / "logs", delay)
    controller = Controller.from_settings(
        settings,
        supervise=lambda on_end: fake,  # type: ignore[arg-type,return-value]
        choose_encoder=FakeChooser(),  # type: ignore[arg-type]
        check_source=lambda spec, ffprobe: None,
    )
    return controller, fake


def spec(name: str) -> StreamSpec:
    return spec_from_request({"name": name, "testsrc": True, "output": "null"})


def saved(home: Path) -> set[str]:
    path = home / "active_streams.json"
    return set(json.loads(path.read_text())) if path.exists() else set()


def save_many(controller: Controller, names: list[str]) -> None:
    for name in names:
        controller.store.save(name, new_entry(to_config(spec(name)), time.time()))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def pattern_config(**extra: str) -> dict[str, str]:
    """A saved test pattern's config in the original app's format, with ``extra`` on top."""
    return {
        "video_codec": "h264",
        "resolution": "480",
        "target_fps": "5",
        "audio_enabled": "no",
        "audio_codec": "aac",
        "hardware_accel": "no",
        "duration_hours": "0",
        "stream_type": "testsrc",
        "output": "null",
        **extra,
    }
