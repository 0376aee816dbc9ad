"""Where things live and how the daemon behaves: environment > config.toml > default.

Only reads; creating directories is left to the code that writes into them. Every
CLI command loads this, ``--json`` polls included: it imports no more than it must
(tomllib only when a config.toml exists, platformdirs only without a home).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from streamalchemy.errors import ConfigError

TYPE_CHECKING = False  # not typing's: every CLI command loads settings; typing costs 2-3 ms
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    import collections

    class _Fields(type):
        """What ``class Settings(NamedTuple)`` does, without importing typing: a
        ``collections.namedtuple`` of the class's annotated fields, in order."""

        def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
            if not bases:
                return super().__new__(mcs, name, bases, ns)
            cls = collections.namedtuple(name, list(ns["__annotations__"]))
            cls.__doc__, cls.__module__ = ns.get("__doc__"), ns["__module__"]
            return cls

    class NamedTuple(metaclass=_Fields):
        pass


APP = "streamalchemy"
DEFAULT_RTSP_URL = "rtsp://127.0.0.1:8554"


class Settings(NamedTuple):
    data_dir: Path
    log_dir: Path
    config_file: Path
    state_file: Path
    socket: Path
    hls_dir: Path
    persistence_enabled: bool
    backup_count: int
    ffmpeg: str
    ffprobe: str
    rtsp_url: str
    autostart: bool
    stall_timeout: float
    mediamtx: str | None
    log_max_bytes: int
    log_backups: int
    metrics_addr: tuple[str, int] | None
    shards: int | None
    live_restore: bool
    shed_after: float


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false or 1/0")


def _in_range(
    convert: Callable[[str], float], low: float, high: float, expected: str
) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            raise ValueError(expected) from None
        if not low <= number <= high:
            raise ValueError(expected)
        return number

    return parse


def _parse_program(value: str) -> str:
    """A binary to run, or "" for off: then nothing is looked up on PATH either."""
    return "" if value.strip().lower() in ("off", "no", "none", "false", "0") else value


def _parse_rtsp_url(value: str) -> str:
    if not value.startswith(("rtsp://", "rtsps://")):
        raise ValueError("expected an rtsp:// URL")
    from urllib.parse import urlsplit  # only when the URL is set: not on every command's path

    parts = urlsplit(value)  # "Invalid IPv6 URL": a ValueError, reported as the others
    if not parts.hostname or parts.port == 0:  # a port out of range raises as well
        raise ValueError("expected rtsp://HOST[:PORT]/PATH with a port from 1 to 65535")
    return value.rstrip("/")


def parse_addr(value: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:PORT for IPv6) for the metrics listener."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


# setting (also its config.toml key) -> (environment variable, parser)
_KNOWN: dict[str, tuple[str, Callable[[str], Any]]] = {
    "state_file": ("STREAM_PERSISTENCE_FILE", Path),
    "socket": ("STREAMALCHEMY_SOCKET", Path),
    "persistence_enabled": ("ENABLE_STREAM_PERSISTENCE", _parse_bool),
    "backup_count": (
        "STREAM_PERSISTENCE_BACKUP_COUNT",
        _in_range(int, 0, 100, "expected a whole number from 0 to 100"),
    ),
    "ffmpeg": ("STREAMALCHEMY_FFMPEG", str),
    "ffprobe": ("STREAMALCHEMY_FFPROBE", str),
    "rtsp_url": ("STREAMALCHEMY_RTSP_URL", _parse_rtsp_url),
    "autostart": ("STREAMALCHEMY_AUTOSTART", _parse_bool),
    "stall_timeout": (
        "STREAMALCHEMY_STALL_TIMEOUT",
        _in_range(float, 1, 3600, "expected a number of seconds from 1 to 3600"),
    ),
    "mediamtx": ("STREAMALCHEMY_MEDIAMTX", _parse_program),
    "log_max_bytes": (
        "STREAMALCHEMY_LOG_MAX_BYTES",
        _in_range(int, 1024, 1 << 40, "expected a number of bytes from 1024 up"),
    ),
    "log_backups": (
        "STREAMALCHEMY_LOG_BACKUPS",
        _in_range(int, 0, 100, "expected a whole number from 0 to 100"),
    ),
    "metrics_addr": ("STREAMALCHEMY_METRICS_ADDR", parse_addr),
    "live_restore": ("STREAMALCHEMY_LIVE_RESTORE", _parse_bool),
    "shards": (
        "STREAMALCHEMY_SHARDS",
        _in_range(int, 1, 10000, "expected a whole number of shards from 1 up"),
    ),
    "shed_after": (
        "STREAMALCHEMY_SHED_AFTER",
        _in_range(float, 0, 3600, "expected a number of seconds from 0 (never shed) to 3600"),
    ),
}


def _base_dirs(env: Mapping[str, str]) -> tuple[Path, Path, Path, Path]:
    """Return the data, log, runtime and config directories."""
    home = env.get("STREAMALCHEMY_HOME")
    if home:
        root = Path(home).expanduser().absolute()
        return root, root / "logs", root, root
    import platformdirs

    data = Path(platformdirs.user_data_dir(APP, appauthor=False))
    logs = Path(platformdirs.user_log_dir(APP, appauthor=False))
    config = Path(platformdirs.user_config_dir(APP, appauthor=False))
    xdg_runtime = env.get("XDG_RUNTIME_DIR")
    per_user_run = Path(f"/run/user/{os.getuid()}")
    if xdg_runtime:
        runtime = Path(xdg_runtime) / APP
    elif per_user_run.is_dir():
        runtime = per_user_run / APP
    else:
        # Containers and cron often have no runtime directory; the data dir is private too.
        runtime = data
    return data, logs, runtime, config


def _which(program: str) -> str | None:
    """``shutil.which`` for a bare name or a path, without importing shutil."""
    if os.sep in program:
        return program if os.access(program, os.X_OK) and os.path.isfile(program) else None
    for directory in os.get_exec_path():
        path = os.path.join(directory, program)
        if os.access(path, os.X_OK) and os.path.isfile(path):
            return path
    return None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc}); fix or remove it") from exc
    import tomllib

    try:
        doc = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc}); fix or remove it") from exc
    unknown = sorted(set(doc) - set(_KNOWN))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(_KNOWN))}"
        )
    return doc


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting; raise ConfigError naming the variable or file at fault."""
    env = os.environ if env is None else env
    data, logs, runtime, config_dir = _base_dirs(env)
    config_file = config_dir / "config.toml"
    config = _read_config(config_file)

    resolved: dict[str, Any] = {}
    for key, (var, parse) in _KNOWN.items():
        if env.get(var, "").strip():
            source, raw = var, env[var]
        elif key in config:
            source, raw = f"{config_file}: {key}", config[key]
        else:
            continue
        try:
            resolved[key] = parse(str(raw).lower() if isinstance(raw, bool) else str(raw))
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r} is invalid: {exc}") from exc

    return Settings(
        data_dir=data,
        log_dir=logs,
        config_file=config_file,
        state_file=Path(resolved.get("state_file", data / "active_streams.json")).absolute(),
        socket=Path(resolved.get("socket", runtime / f"{APP}.sock")).absolute(),
        hls_dir=data / "hls",
        persistence_enabled=resolved.get("persistence_enabled", True),
        backup_count=resolved.get("backup_count", 3),
        ffmpeg=resolved.get("ffmpeg") or _which("ffmpeg") or "ffmpeg",
        ffprobe=resolved.get("ffprobe") or _which("ffprobe") or "ffprobe",
        rtsp_url=resolved.get("rtsp_url", DEFAULT_RTSP_URL),
        autostart=resolved.get("autostart", True),
        stall_timeout=resolved.get("stall_timeout", 20.0),
        # "" is off: no look on PATH.
        mediamtx=(resolved["mediamtx"] if "mediamtx" in resolved else _which("mediamtx")) or None,
        log_max_bytes=resolved.get("log_max_bytes", 10 << 20),
        log_backups=resolved.get("log_backups", 3),
        metrics_addr=resolved.get("metrics_addr"),
        shards=resolved.get("shards"),
        live_restore=resolved.get("live_restore", True),
        shed_after=resolved.get("shed_after", 20.0),
    )
