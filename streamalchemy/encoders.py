"""Which video encoders this FFmpeg and this machine offer, and what ``auto`` picks.

Probing costs an ``ffmpeg -encoders`` run plus a test encode per hardware encoder,
so results are kept per FFmpeg binary (path, mtime, size) in a JSON file in the
data directory (and by each ``Chooser`` in memory): a daemon restart does not probe
again. Device
presence is looked up on every call (it is cheap and a GPU can come and go).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamalchemy.errors import EncoderUnavailable, OperationFailed, StreamAlchemyError
from streamalchemy.supervision.ffmpeg import VAAPI_DEVICE, probe_argv

if TYPE_CHECKING:
    from streamalchemy.core.spec import StreamSpec

log = logging.getLogger(__name__)

CACHE_FILE = "encoders.json"
_CACHE_VERSION = 1
SOFTWARE = {"h264": "libx264", "h265": "libx265", "mpeg4": "mpeg4"}
# accelerator -> codec -> encoder; the order is the one ``auto`` tries.
HARDWARE = {
    "nvenc": {"h264": "h264_nvenc", "h265": "hevc_nvenc"},
    "videotoolbox": {"h264": "h264_videotoolbox", "h265": "hevc_videotoolbox"},
    "qsv": {"h264": "h264_qsv", "h265": "hevc_qsv"},
    "vaapi": {"h264": "h264_vaapi", "h265": "hevc_vaapi"},
}
_KNOWN = frozenset(SOFTWARE.values()) | {n for names in HARDWARE.values() for n in names.values()}
_NO_DEVICE = {
    "nvenc": "no NVIDIA device",
    "videotoolbox": "VideoToolbox needs macOS",
    "qsv": "no Intel render node in /dev/dri",
    "vaapi": f"no render node {VAAPI_DEVICE}",
}
_INTEL_VENDOR = "0x8086"
# " V....D libx264   libx264 H.264 / AVC ..." after the "------" line of `ffmpeg -encoders`.
_ENCODER_LINE = re.compile(r"^\s*V[A-Z.]{5}\s+(\S+)")


@dataclass(frozen=True)
class Encoder:
    name: str
    codec: str  # h264 h265 mpeg4
    type: str  # "software" | "hardware"
    available: bool
    reason: str = ""  # why it is not available


Table = dict[str, list[Encoder]]


def present_accelerators() -> frozenset[str]:
    """Accelerators whose device this machine has: the real look-up that tests replace."""
    found = set()
    if Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists():
        found.add("nvenc")
    if Path(VAAPI_DEVICE).exists():
        found.add("vaapi")
    for node in Path("/dev/dri").glob("renderD*"):
        vendor = Path("/sys/class/drm", node.name, "device", "vendor")
        with contextlib.suppress(OSError):
            if vendor.read_text().strip() == _INTEL_VENDOR:
                found.add("qsv")
    if sys.platform == "darwin":
        found.add("videotoolbox")
    return frozenset(found)


def parse_encoders(text: str) -> frozenset[str]:
    """The video encoder names in the output of ``ffmpeg -hide_banner -encoders``."""
    _, _, listing = text.partition("------")
    return frozenset(m[1] for line in listing.splitlines() if (m := _ENCODER_LINE.match(line)))


@dataclass
class _Probe:
    """What one FFmpeg binary has, and which hardware encoders passed a test encode."""

    encoders: frozenset[str]
    tested: dict[str, bool] = field(default_factory=dict)


def detect(
    ffmpeg: str,
    cache_dir: Path | None,
    *,
    devices: Callable[[], frozenset[str]] = present_accelerators,
    timeout: float = 10.0,
) -> Table:
    """Every known encoder this FFmpeg has, per codec, software first, then hardware."""
    binary = shutil.which(ffmpeg)
    if binary is None:
        raise OperationFailed(
            f"ffmpeg not found ({ffmpeg!r}): install FFmpeg (apt install ffmpeg, "
            "brew install ffmpeg) or set STREAMALCHEMY_FFMPEG"
        )
    real = os.path.realpath(binary)
    st = os.stat(real)
    key = (real, st.st_mtime_ns, st.st_size)
    cache = Path(cache_dir, CACHE_FILE) if cache_dir else None
    probe = _read_cache(cache, key) if cache else None
    unsaved = probe is None
    if probe is None:
        probe = _Probe(_list_encoders(binary, timeout))
    tested_before = len(probe.tested)
    table = _table(probe, devices(), lambda name: _test_encode(binary, name, timeout))
    if cache and (unsaved or len(probe.tested) != tested_before):
        _write_cache(cache, key, probe)
    return table


def _table(probe: _Probe, present: frozenset[str], test: Callable[[str], bool]) -> Table:
    """Build the table, running (and remembering in ``probe``) the test encodes still missing."""
    table: Table = {}
    for codec, software in SOFTWARE.items():
        has = software in probe.encoders
        reason = "" if has else f"this FFmpeg has no {software}"
        table[codec] = [Encoder(software, codec, "software", has, reason)]
    for accel, names in HARDWARE.items():
        for codec, name in names.items():
            if name not in probe.encoders:
                continue
            if accel not in present:
                table[codec].append(Encoder(name, codec, "hardware", False, _NO_DEVICE[accel]))
                continue
            if name not in probe.tested:
                probe.tested[name] = test(name)
            works = probe.tested[name]
            reason = "" if works else f"a test encode with {name} failed"
            table[codec].append(Encoder(name, codec, "hardware", works, reason))
    return table


def choose(codec: str, hwaccel: str, table: Mapping[str, list[Encoder]]) -> str:
    """The encoder for ``codec`` under ``--hwaccel``; raise EncoderUnavailable if there is none."""
    if codec == "copy":
        return "copy"
    encoders = table.get(codec, [])
    if hwaccel == "auto":
        hardware = [e for e in encoders if e.type == "hardware" and e.available]
        if hardware:
            return hardware[0].name
    if hwaccel in ("none", "auto"):
        software = next((e for e in encoders if e.type == "software"), None)
        if software is None or not software.available:
            name = SOFTWARE.get(codec, codec)
            raise EncoderUnavailable(
                f"no {codec} encoder: this FFmpeg has no {name}; "
                "install an FFmpeg built with it or choose another --codec"
            )
        return software.name
    wanted = HARDWARE.get(hwaccel, {}).get(codec)
    match = next((e for e in encoders if e.name == wanted), None)
    if match is not None and match.available:
        return match.name
    if match is not None:
        why = match.reason
    elif wanted:
        why = f"this FFmpeg has no {wanted}"
    else:
        why = f"{hwaccel} has no {codec} encoder"
    raise EncoderUnavailable(
        f"{codec} encoder for {hwaccel} is not available on this machine ({why}); "
        "use --hwaccel auto or none"
    )


class Chooser:
    """One FFmpeg's encoder table, detected once, and the encoder a spec gets.

    The daemon calls ``ready`` first, which probes in a thread (concurrent callers
    share one probe), so a slow or hanging FFmpeg never blocks its event loop. A
    copy stream needs no encoder and never waits for a probe. A failed probe is
    remembered for ``RETRY_AFTER`` seconds, then tried again.
    """

    RETRY_AFTER = 30.0

    def __init__(self, ffmpeg: str, cache_dir: Path | None) -> None:
        self.ffmpeg, self.cache_dir = ffmpeg, cache_dir
        self._table: Table | None = None
        self._error: tuple[float, StreamAlchemyError] | None = None
        self._probing: asyncio.Future[Table] | None = None

    def table(self) -> Table:
        if self._table is not None:
            return self._table
        if self._error is not None and time.monotonic() - self._error[0] < self.RETRY_AFTER:
            raise self._error[1]
        try:
            self._table = detect(self.ffmpeg, self.cache_dir)
        except StreamAlchemyError as exc:
            self._error = (time.monotonic(), exc)
            raise
        return self._table

    async def ready(self) -> None:
        """Detect off the event loop, once; a failure is raised by the next ``__call__``."""
        if self._table is not None:
            return
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(asyncio.to_thread(self.table))
        with contextlib.suppress(StreamAlchemyError):
            await asyncio.shield(self._probing)

    def __call__(self, spec: StreamSpec) -> str:
        if spec.codec == "copy":
            return "copy"
        if self._table is None and self._error is not None:
            raise self._error[1]  # probing again is ``ready``'s job, off the loop
        return choose(spec.codec, spec.hwaccel, self.table())

    async def choose_async(self, spec: StreamSpec) -> str:
        if spec.codec != "copy":
            await self.ready()
        return self(spec)


def report(table: Mapping[str, list[Encoder]]) -> dict[str, Any]:
    """The ``encoders --json`` document, without ``success``."""
    auto: dict[str, str | None] = {}
    for codec in table:
        try:
            auto[codec] = choose(codec, "auto", table)
        except EncoderUnavailable:
            auto[codec] = None
    return {
        "encoders": {
            codec: [{"name": e.name, "type": e.type, "available": e.available} for e in encoders]
            for codec, encoders in table.items()
        },
        "auto": auto,
    }


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run argv in its own process group; on timeout the whole group is killed.

    A wrapper script that hangs (or whose child does) must not outlive its timeout.
    """
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        process_group=0,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _list_encoders(ffmpeg: str, timeout: float) -> frozenset[str]:
    try:
        done = _run([ffmpeg, "-hide_banner", "-encoders"], timeout)
    except subprocess.TimeoutExpired:
        raise OperationFailed(
            f"{ffmpeg} -encoders did not answer within {timeout:g}s; check STREAMALCHEMY_FFMPEG"
        ) from None
    except OSError as exc:
        raise OperationFailed(f"cannot list the encoders of {ffmpeg}: {exc}") from exc
    stdout = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise OperationFailed(f"{ffmpeg} -encoders failed (exit {done.returncode}): {last}")
    return parse_encoders(stdout) & _KNOWN


def _test_encode(ffmpeg: str, encoder: str, timeout: float) -> bool:
    try:
        done = _run(probe_argv(ffmpeg, encoder), timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _read_cache(path: Path, key: tuple[str, int, int]) -> _Probe | None:
    try:
        entry = json.loads(path.read_text())["ffmpeg"][key[0]]
        if entry["version"] != _CACHE_VERSION or (entry["mtime_ns"], entry["size"]) != key[1:]:
            return None
        tested = {str(k): bool(v) for k, v in entry["tested"].items()}
        return _Probe(frozenset(map(str, entry["encoders"])), tested)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, stale or damaged: probe again


def _write_cache(path: Path, key: tuple[str, int, int], probe: _Probe) -> None:
    """Merge this binary's probe into the cache file; failing to cache is not an error."""
    try:
        doc = json.loads(path.read_text())
        binaries = doc["ffmpeg"] if isinstance(doc.get("ffmpeg"), dict) else {}
    except (OSError, ValueError, AttributeError):
        binaries = {}
    binaries[key[0]] = {
        "version": _CACHE_VERSION,
        "mtime_ns": key[1],
        "size": key[2],
        "encoders": sorted(probe.encoders),
        "tested": probe.tested,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        log.debug("cannot write the encoder cache %s: %s", path, exc)
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"ffmpeg": binaries}, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot write the encoder cache %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
