"""Prometheus metrics of the daemon: one custom collector over its live streams and counters.

Imported by the daemon only, so that prometheus-client stays off the CLI's fast path.
Nothing here changes a stream: it reads the streams' live figures, each FFmpeg's CPU
time and memory (``/proc``), and the daemon's counters. The TCP handler serves
``GET /metrics`` and nothing else: no control route is ever reachable over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamalchemy import __version__
from streamalchemy.errors import InvalidInput
from streamalchemy.server.httpserver import (
    BACKLOG,
    PUBLIC,
    Reply,
    Text,
    TextReply,
    connection_handler,
)
from streamalchemy.supervision import procs
from streamalchemy.supervision.recordings import hls_files

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from streamalchemy.persist import StateStore
    from streamalchemy.supervision.stream import Stream

log = logging.getLogger("streamalchemy.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RESTORE_RESULTS = ("restored", "skipped", "failed")
# Seconds between reads of the HLS segments' sizes; FFmpeg keeps a segment some 18 s.
SAMPLE_PERIOD = 5.0


@dataclass
class DaemonFigures:
    """The daemon-wide figures, read at each scrape."""

    started: float
    restore_results: Mapping[str, int]
    state_writes: int
    state_write_errors: int


@dataclass
class _Growing:
    """A counter read from a figure that starts again from zero (a new FFmpeg, a new run)."""

    base: float = 0.0
    last: float = 0.0

    def see(self, value: float) -> float:
        if value < self.last:
            self.base += self.last  # the figure started again: keep what was counted
        self.last = value
        return self.base + value


@dataclass
class _Segments:
    """Bytes of the HLS segments a stream wrote, from the sizes of its segment files.

    FFmpeg reports no byte count for HLS, and deletes old segments itself: sizes are
    read often enough (``SAMPLE_PERIOD``) that a segment is seen before it goes, and
    one that went keeps counting.
    """

    gone: int = 0
    sizes: dict[str, int] = field(default_factory=dict)

    def see(self, directory: Path) -> float:
        now: dict[str, int] = {}
        for segment in hls_files(directory):
            with contextlib.suppress(OSError):
                now[segment.name] = segment.stat().st_size
        for name, size in self.sizes.items():
            if now.get(name, 0) < size:  # deleted, or a new run's segment under an old name
                self.gone += size
        self.sizes = now
        return float(self.gone + sum(now.values()))


@dataclass
class _Ledger:
    """One stream's counters, kept growing across FFmpeg restarts and replaced runs."""

    frames: _Growing = field(default_factory=_Growing)
    restarts: _Growing = field(default_factory=_Growing)
    output: _Growing = field(default_factory=_Growing)
    segments: _Segments = field(default_factory=_Segments)
    cpu_base: float = 0.0  # CPU seconds of the FFmpeg processes that ended
    cpu_pid: int | None = None
    cpu_last: float = 0.0

    def usage(self, pid: int | None) -> tuple[float, int | None]:
        """CPU seconds of every FFmpeg of this stream so far, and the current one's RSS."""
        if pid != self.cpu_pid:
            # A process seen at the last scrape ended: its CPU since then is not seen,
            # so the counter may fall short by that much, but it never goes back.
            self.cpu_base += self.cpu_last
            self.cpu_pid, self.cpu_last = pid, 0.0
        usage = None if pid is None else procs.process_usage(pid)
        if usage is None:
            return self.cpu_base + self.cpu_last, None
        self.cpu_last = max(self.cpu_last, usage[0])
        return self.cpu_base + self.cpu_last, usage[1]


def stream_figures(stream: Stream) -> dict[str, Any]:
    """What the collector reads of a stream: the keys of its snapshot, without the cost
    of one (no credential masking, no psutil; the collector reads /proc itself)."""
    progress = stream.progress
    return {
        "name": stream.spec.name,
        "status": stream.status,
        "pid": stream.pid,
        "codec": stream.spec.codec,
        "encoder": stream.encoder,
        "source_type": stream.spec.source_type,
        "frames": progress.frames,
        "fps": progress.fps,
        "output_bytes": progress.total_size,
        "hls_dir": str(Path(stream.target).parent) if stream.spec.output == "hls" else None,
        "speed": progress.speed,
        "restarts": stream.restarts,
        "remaining_seconds": stream.remaining(time.time()),
    }


class StreamCollector:
    """Yields the metric families of the contract from the daemon's live state."""

    def __init__(
        self,
        snapshots: Callable[[], Iterable[Mapping[str, Any]]],
        figures: Callable[[], DaemonFigures],
    ) -> None:
        self._snapshots = snapshots
        self._figures = figures
        self._ledgers: dict[str, _Ledger] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._stream_families(list(self._snapshots()))
        yield from self._daemon_families(self._figures())

    def sample_segments(self) -> None:
        """Read the HLS segments' sizes between scrapes: FFmpeg deletes the old ones."""
        for snap in self._snapshots():
            if snap.get("hls_dir"):
                ledger = self._ledgers.setdefault(str(snap["name"]), _Ledger())
                ledger.segments.see(Path(snap["hls_dir"]))

    def _stream_families(self, snapshots: list[Mapping[str, Any]]) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        name = ["name"]
        up = GaugeMetricFamily(
            "streamalchemy_stream_up",
            "1 while the stream's FFmpeg runs and reports progress",
            labels=name,
        )
        info = GaugeMetricFamily(
            "streamalchemy_stream_info",
            "The stream's status, codec, encoder and source type (value 1)",
            labels=["name", "status", "codec", "encoder", "source_type"],
        )
        frames = CounterMetricFamily(
            "streamalchemy_stream_frames",
            "Frames FFmpeg has output, across its restarts",
            labels=name,
        )
        fps = GaugeMetricFamily(
            "streamalchemy_stream_fps", "Frames per second FFmpeg last reported", labels=name
        )
        output = CounterMetricFamily(
            "streamalchemy_stream_output_bytes",
            "Bytes FFmpeg has written (for HLS, of its segments), across its restarts",
            labels=name,
        )
        speed = GaugeMetricFamily(
            "streamalchemy_stream_speed",
            "Encoding speed FFmpeg last reported (1 is real time)",
            labels=name,
        )
        restarts = CounterMetricFamily(
            "streamalchemy_stream_restarts",
            "Times FFmpeg was restarted after it exited",
            labels=name,
        )
        remaining = GaugeMetricFamily(
            "streamalchemy_stream_remaining_seconds",
            "Seconds until the stream's duration ends (absent when unlimited)",
            labels=name,
        )
        cpu = CounterMetricFamily(
            "streamalchemy_stream_cpu_seconds",
            "User and system CPU seconds of the stream's FFmpeg processes",
            labels=name,
        )
        memory = GaugeMetricFamily(
            "streamalchemy_stream_memory_bytes",
            "Resident memory of the stream's FFmpeg process",
            labels=name,
        )
        seen = set()
        for snap in snapshots:
            key = str(snap["name"])
            seen.add(key)
            ledger = self._ledgers.setdefault(key, _Ledger())
            label = [key]
            up.add_metric(label, 1.0 if snap["status"] == "running" else 0.0)
            info.add_metric(
                [
                    key,
                    str(snap["status"]),
                    str(snap.get("codec", "")),
                    str(snap.get("encoder", "")),
                    str(snap.get("source_type", "")),
                ],
                1.0,
            )
            frames.add_metric(label, ledger.frames.see(float(snap["frames"] or 0)))
            restarts.add_metric(label, ledger.restarts.see(float(snap["restarts"] or 0)))
            cpu_seconds, rss = ledger.usage(snap["pid"])
            cpu.add_metric(label, cpu_seconds)
            # A figure not known yet is left out, never NaN.
            if snap.get("fps") is not None:
                fps.add_metric(label, float(snap["fps"]))
            if snap.get("hls_dir"):
                output.add_metric(label, ledger.segments.see(Path(snap["hls_dir"])))
            elif snap.get("output_bytes") is not None:
                output.add_metric(label, ledger.output.see(float(snap["output_bytes"])))
            if snap.get("speed") is not None:
                speed.add_metric(label, float(snap["speed"]))
            if snap.get("remaining_seconds") is not None:
                remaining.add_metric(label, float(snap["remaining_seconds"]))
            if rss is not None:
                memory.add_metric(label, float(rss))
        for gone in self._ledgers.keys() - seen:
            del self._ledgers[gone]
        yield from (up, info, frames, fps, output, speed, restarts, remaining, cpu, memory)

    def _daemon_families(self, figures: DaemonFigures) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        build = GaugeMetricFamily(
            "streamalchemy_build_info", "The daemon's version (value 1)", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield build
        yield GaugeMetricFamily(
            "streamalchemy_daemon_start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch",
            value=figures.started,
        )
        results = CounterMetricFamily(
            "streamalchemy_restore_results",
            "Saved streams restored, skipped or failed by restores since the daemon started",
            labels=["result"],
        )
        for result in RESTORE_RESULTS:
            results.add_metric([result], float(figures.restore_results.get(result, 0)))
        yield results
        yield CounterMetricFamily(
            "streamalchemy_state_writes",
            "State file writes attempted since the daemon started",
            value=figures.state_writes,
        )
        yield CounterMetricFamily(
            "streamalchemy_state_write_errors",
            "State file writes that failed since the daemon started",
            value=figures.state_write_errors,
        )


class Metrics:
    """The daemon's registry: ``exposition()`` is the body of ``GET /metrics``."""

    def __init__(
        self,
        snapshots: Callable[[], Iterable[Mapping[str, Any]]],
        figures: Callable[[], DaemonFigures],
    ) -> None:
        self._collector = StreamCollector(snapshots, figures)
        self._registry: CollectorRegistry | None = None
        self._sampling: asyncio.TimerHandle | None = None
        self.restore_results = dict.fromkeys(RESTORE_RESULTS, 0)

    @classmethod
    def of(
        cls, store: StateStore, started: float, streams: Callable[[], Iterable[Stream]]
    ) -> Metrics:
        """The metrics of a daemon started at ``started``, with its state store and streams."""

        def figures() -> DaemonFigures:
            return DaemonFigures(
                started=started,
                restore_results=metrics.restore_results,
                state_writes=store.writes,
                state_write_errors=store.write_errors,
            )

        metrics = cls(lambda: map(stream_figures, streams()), figures)
        return metrics

    def count_restore(self, results: Mapping[str, Mapping[str, str]]) -> None:
        """Count what one restore (not a dry run) did with each saved stream."""
        for outcome in results.values():
            result = outcome.get("result")
            if result in self.restore_results:  # never let counting break a restore
                self.restore_results[result] += 1

    @property
    def registry(self) -> CollectorRegistry:
        """Made at the first scrape: prometheus_client's import costs every daemon launch
        some 15 ms (a restore waits for it) and most daemons are never scraped."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            # No default process/platform collectors: only the contract's families, cheaply.
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self._collector)
        return self._registry

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        self._sample_from_now()
        return generate_latest(self.registry)

    def _sample_from_now(self) -> None:
        """From the first scrape on, count HLS bytes every SAMPLE_PERIOD (none before:
        most daemons are never scraped, and a counter may start at its first sight)."""
        if self._sampling is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # read outside the daemon's loop: each scrape samples by itself

        def tick() -> None:
            try:
                self._collector.sample_segments()
            finally:
                self._sampling = loop.call_later(SAMPLE_PERIOD, tick)

        self._sampling = loop.call_later(SAMPLE_PERIOD, tick)

    def reply(self) -> TextReply:
        return 200, Text(self.exposition(), CONTENT_TYPE)

    async def handle_tcp(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
    ) -> Reply | TextReply:
        """The TCP listener's only route; everything else is refused there."""
        # Fixed words: nothing of a network peer's request is repeated back to it.
        if path != "/metrics":
            return 404, {"success": False, "message": "only GET /metrics is served on this address"}
        if method != "GET":
            return 405, {"success": False, "message": "only GET is allowed on /metrics"}
        try:
            return self.reply()
        except Exception as exc:  # a bug must not take the listener down
            log.exception("error serving /metrics")
            return 500, {"success": False, "message": f"daemon error: {exc}"}


async def listen(metrics: Metrics, addr: tuple[str, int]) -> asyncio.Server:
    """Serve ``GET /metrics`` on TCP ``addr``; an address that cannot be used is bad input."""
    host, port = addr
    try:
        return await asyncio.start_server(
            connection_handler(metrics.handle_tcp, PUBLIC), host, port, backlog=BACKLOG
        )
    except OSError as exc:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # asyncio wraps the bind error in its own words; the system's say it plainly.
        if exc.errno and not isinstance(exc, socket.gaierror):
            why = os.strerror(exc.errno)
        else:
            why = exc.strerror or str(exc)
        raise InvalidInput(
            f"cannot serve metrics on {shown}: {why.lower()}; "
            "give STREAMALCHEMY_METRICS_ADDR or --metrics-addr a free local HOST:PORT"
        ) from None
