"""The JSON documents the daemon answers, the commands return and the renderer prints.

Types only: nothing here runs. The daemon builds these dictionaries, the CLI prints
them as they are under ``--json`` (the contract's shapes) or hands them to
``render``. Modules on the CLI's fast path import this only under TYPE_CHECKING.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class ExitDoc(TypedDict):
    """One end of an FFmpeg run: when, its exit code (None when killed), and why."""

    at: float
    code: int | None
    reason: str


class StreamDoc(TypedDict):
    """STREAM of the contract: one supervised stream and its live figures."""

    name: str
    status: str  # starting running retrying stopping failed finished shed
    pid: int | None
    source: str  # credentials masked
    source_type: str
    output: str  # credentials masked
    codec: str
    encoder: str
    restart: str
    priority: int
    saved_at: float
    started_at: float | None
    uptime_seconds: float | None
    duration_seconds: float | None
    remaining_seconds: float | None
    restarts: int
    frames: int | None
    fps: float | None
    bitrate_kbps: float | None
    speed: float | None
    recent_speed: NotRequired[float | None]  # over the last 10 s, as shedding judges it
    cpu_percent: float | None
    memory_mb: float | None
    last_error: str | None
    log_file: str
    current_output: NotRequired[str]  # the file being written now, for a file output
    # Whether the state file holds it (list and show): if not, a daemon restart ends it.
    saved: NotRequired[bool]
    exits: NotRequired[list[ExitDoc]]


class SavedEntry(TypedDict):
    """One entry of the state file, in the original StreamAlchemy's format."""

    config: dict[str, str]
    saved_at: float
    status: str


class Failure(TypedDict):
    success: bool  # always False
    message: str


class ListResult(TypedDict):
    success: bool
    streams: list[StreamDoc]
    not_running: dict[str, str]  # saved streams that do not run, and why


class StartResult(TypedDict):
    success: bool
    stream: StreamDoc


class StopResult(TypedDict):
    success: bool
    stopped: list[str]


class RestartFailure(TypedDict):
    name: str
    reason: str


class RestartResult(TypedDict):
    success: bool
    restarted: list[str]
    failed: list[RestartFailure]


class SavedResult(TypedDict):
    success: bool
    streams: dict[str, SavedEntry]
    enabled: bool


class MessageResult(TypedDict):
    """``clear`` and ``daemon stop``."""

    success: bool
    message: str
    pid: NotRequired[int]


class DaemonRestartResult(TypedDict):
    """``daemon restart``: the daemon now answering, and the version it replaced."""

    success: bool
    message: str
    pid: int
    version: str
    previous_version: str | None
    live_restore: bool


class RestoreOutcome(TypedDict):
    result: str  # restored skipped failed
    reason: str


class RestoreResult(TypedDict):
    success: bool
    results: dict[str, RestoreOutcome]


class StatusResult(TypedDict):
    success: bool
    pid: int
    version: str
    uptime_seconds: float
    socket: str
    state_file: str
    persistence_enabled: bool
    streams: int
    home: str
    install_path: str
    log_dir: str
    metrics_addr: NotRequired[str | None]  # HOST:PORT of GET /metrics over TCP, if served
    ffmpeg: str
    state_write_ok: NotRequired[bool]
    state_write_error: NotRequired[str | None]
    started_at: NotRequired[float]
    live_restore: NotRequired[bool]


class EncoderDoc(TypedDict):
    name: str
    type: str  # software hardware
    available: bool


class EncodersResult(TypedDict):
    success: bool
    encoders: dict[str, list[EncoderDoc]]
    auto: dict[str, str | None]


class LogsResult(TypedDict):
    success: bool
    name: str
    path: str
    lines: list[str]
    offset: int  # the log's size when ``lines`` were read: where a follower starts


class ShowResult(TypedDict):
    """``show NAME``: the stream (or, for a saved stream not running, what the file says)."""

    success: bool
    stream: StreamDoc
    spec: dict[str, object]  # the start options, credentials masked
    exits: list[ExitDoc]
    deadline: float | None  # when it ends for good; None when unlimited
    log_file: str
