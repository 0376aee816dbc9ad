"""What each command does: one function per command, returning its JSON document.

``cli`` parses the command line and prints what these return (rich or ``--json``);
``main``'s fast path calls the same functions without Typer. Nothing here prints,
and the imports stay light (no Typer, no rich, no tomllib): scripts poll these.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

from streamalchemy.client.connection import Client, launch_failed
from streamalchemy.core.names import is_valid_name, validate_name
from streamalchemy.errors import (
    DaemonUnreachable,
    InvalidInput,
    OperationFailed,
    StreamAlchemyError,
    StreamNotFound,
)
from streamalchemy.settings import Settings, load_settings

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, cast

    from streamalchemy.client.logfollow import Follower
    from streamalchemy.core.documents import (
        DaemonRestartResult,
        EncodersResult,
        ListResult,
        LogsResult,
        MessageResult,
        RestartFailure,
        RestartResult,
        RestoreResult,
        SavedResult,
        ShowResult,
        StartResult,
        StatusResult,
        StopResult,
    )
    from streamalchemy.persist import StateStore
else:

    def cast(_type: object, value: object) -> object:
        return value


def client(settings: Settings | None = None) -> Client:
    return Client(settings or load_settings())


def _store(settings: Settings) -> StateStore:
    from streamalchemy.persist import StateStore

    return StateStore(
        settings.state_file,
        backup_count=settings.backup_count,
        enabled=settings.persistence_enabled,
    )


def _masked(doc: object) -> object:
    """``doc`` with every secret masked (masking imports what the polled path skips)."""
    from streamalchemy.core.masking import mask_document

    return mask_document(doc)


def _abs_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def start_body(
    name: str,
    *,
    file: str | None = None,
    url: str | None = None,
    testsrc: bool = False,
    output: str | None = None,
    replace: bool = False,
    overwrite: bool = False,
    **options: object,
) -> dict[str, Any]:
    """The ``POST /streams`` body, checked by the daemon's own rules (bad input is exit 2
    whatever the daemon's state); relative paths are the caller's, so they resolve here.
    ``options`` are the start options of ``options.START_OPTIONS``; None means the default.
    """
    from streamalchemy.core import outputs
    from streamalchemy.core.options import START_OPTIONS
    from streamalchemy.core.spec import source_kind, spec_from_request

    unknown = sorted(set(options) - set(START_OPTIONS))
    if unknown:
        raise InvalidInput(f"unknown start option {unknown[0]!r}")
    body: dict[str, Any] = {"name": name, **options, "replace": replace, "overwrite": overwrite}
    kind = source_kind({"file": file, "url": url, "testsrc": testsrc or None})
    if kind == "file" and file is not None:
        body["file"] = _abs_path(file)
    elif kind == "url":
        body["url"] = url
    else:
        body["testsrc"] = True
    if output is not None:
        body["output"] = _abs_path(output) if outputs.is_path(output) else output
    spec_from_request(body)  # a malformed URL or port, a bad name: before any daemon
    return body


def start(body: dict[str, Any]) -> StartResult:
    """Start a stream; the daemon answers once FFmpeg runs and the stream is saved."""
    return cast("StartResult", client().request("POST", "/streams", body))


def _names_or_all(names: Sequence[str], all_streams: bool, verb: str) -> dict[str, Any]:
    if bool(names) == all_streams:
        raise InvalidInput(f"name the streams to {verb}, or give --all")
    return {"names": list(names), "all": all_streams}


def stop(names: Sequence[str], all_streams: bool) -> StopResult:
    """Stop streams; with the daemon down, remove them from the state file instead.

    Starting the daemon for a stop would restore every saved stream first, the ones
    to stop included: they would run for seconds, and a recording would begin a file.
    """
    body = _names_or_all(names, all_streams, "stop")
    c = client()
    if not c.reachable():
        from streamalchemy.client.offline import stop_saved

        return stop_saved(_store(c.settings), [validate_name(n) for n in names], all_streams)
    reply = c.request("POST", "/stop", body)
    return {"success": True, "stopped": reply["stopped"]}


def restart(names: Sequence[str], all_streams: bool) -> RestartResult:
    """Stop and start again with the saved spec; the deadline (``saved_at``) is kept.

    Each name is its own request, which the daemon serialises with every other
    lifecycle of that name. A failure does not stop the others: each stream that
    failed is in ``failed`` with its reason (``success`` false, exit 1). Unknown
    names fail the command (exit 4) after the known ones are restarted, as ``stop``
    does.
    """
    _names_or_all(names, all_streams, "restart")
    c = client()
    if all_streams:
        listing = c.request("GET", "/streams")
        active = {s["name"] for s in listing["streams"] if s["status"] != "finished"}
        names = sorted(active | set(listing.get("not_running", {})))
    restarted: list[str] = []
    unknown: list[str] = []
    failed: list[RestartFailure] = []
    for name in dict.fromkeys(map(validate_name, names)):
        try:
            c.request("POST", f"/streams/{name}/restart", {}, timeout=600)
        except StreamNotFound:
            unknown.append(name)
        except DaemonUnreachable:
            raise  # no daemon to go on with
        except StreamAlchemyError as exc:  # a source gone, FFmpeg failing: that stream's
            reason = str(exc).removeprefix(f"{name}: ")
            failed.append({"name": name, "reason": reason})
        else:
            restarted.append(name)
    if unknown:
        done = f" (restarted: {', '.join(restarted)})" if restarted else ""
        raise StreamNotFound(f"no such stream: {', '.join(unknown)}{done}")
    if failed:
        return {"success": False, "restarted": restarted, "failed": failed}
    return {"success": True, "restarted": restarted}


def list_streams() -> ListResult:
    return cast("ListResult", client().request("GET", "/streams"))


def show(name: str) -> ShowResult:
    """Everything about one stream; with the daemon down, what the state file says.

    ``show`` never starts the daemon: looking at a stream should not restore the others.
    """
    validate_name(name)
    c = client()
    if c.reachable():
        return cast("ShowResult", c.request("GET", f"/streams/{name}/details", autostart=False))
    from streamalchemy.core import details

    settings = c.settings
    entries = _store(settings).load()
    if name not in entries:
        raise StreamNotFound(f"no such stream: {name}")
    found = details.saved_details(
        name,
        entries[name],
        log_file=str(settings.log_dir / "streams" / f"{name}.log"),
        why="the daemon is not running",
        target=lambda spec: spec.target(settings.rtsp_url, settings.hls_dir),
    )
    return cast("ShowResult", _masked(found))


def saved() -> SavedResult:
    """The state file's entries: from the daemon when it runs (it reads them under the
    lock, and masks its replies; asking it keeps this poll lean), else read here under
    the lock."""
    c = client()
    try:
        return cast("SavedResult", c.request("GET", "/persistent_streams", autostart=False))
    except DaemonUnreachable:
        store = _store(c.settings)
        # The state file keeps literal secrets (0600); what is printed has them masked.
        doc = {"success": True, "streams": store.load(), "enabled": store.enabled}
        return cast("SavedResult", _masked(doc))


def restore(dry_run: bool) -> RestoreResult:
    """Restore now, reporting each stream, whether or not the daemon is up.

    With the daemon down, a dry run plans from the file without starting one (that
    would restore for real), and a real restore starts it without its launch-time
    restore so that this request does the work and reports every stream.
    """
    c = client()
    if not c.reachable():
        if dry_run:
            return cast("RestoreResult", {"success": True, "results": _plan_offline(c.settings)})
        if c.settings.autostart:
            c.start_daemon(restore=False)
    reply = c.request("POST", "/restore_streams", {"dry_run": dry_run}, timeout=600)
    return {"success": reply["success"], "results": reply["results"]}


def _plan_offline(settings: Settings) -> dict[str, dict[str, str]]:
    from streamalchemy import encoders
    from streamalchemy.core import restore

    choose = encoders.Chooser(settings.ffmpeg, settings.data_dir)
    steps = restore.plan(_store(settings).load(), running=(), choose_encoder=choose)
    return cast("dict[str, dict[str, str]]", _masked(restore.dry_run_results(steps)))


def clear() -> MessageResult:
    _store(load_settings()).clear()
    return {"success": True, "message": "All persistent streams cleared"}


def logs(name: str, lines: int) -> LogsResult:
    return cast("LogsResult", client().request("GET", f"/streams/{name}/logs?lines={lines}"))


def all_logs(lines: int) -> dict[str, LogsResult]:
    """The log tail of every stream the daemon has or the state file keeps, by name."""
    c = client()
    listing = c.request("GET", "/streams")
    names = sorted({s["name"] for s in listing["streams"]} | set(listing.get("not_running", {})))
    tails: dict[str, LogsResult] = {}
    for name in names:
        try:
            reply = c.request("GET", f"/streams/{name}/logs?lines={lines}")
            tails[name] = cast("LogsResult", reply)
        except StreamNotFound:
            continue  # saved but never run here: no log yet
    return tails


def stream_names(settings: Settings | None = None) -> list[str]:
    """Names for shell completion: the state file's and the daemon's, never starting it."""
    import json

    settings = settings or load_settings()
    names: set[str] = set()
    try:
        doc = json.loads(settings.state_file.read_bytes())
        if isinstance(doc, dict):
            names.update(doc)
    except (OSError, ValueError):
        pass
    c = Client(settings)
    if settings.socket.exists():
        try:
            reply = c.request("GET", "/streams", autostart=False, timeout=1.0)
            names.update(s["name"] for s in reply["streams"])
        except Exception:
            pass
    # A hand-edited state file may hold any key: offer the shell only real names.
    return sorted(n for n in names if is_valid_name(n))


def encoders() -> EncodersResult:
    from streamalchemy import encoders as enc

    settings = load_settings()
    report = enc.report(enc.detect(settings.ffmpeg, settings.data_dir))
    return cast("EncodersResult", {"success": True, **report})


def daemon_status() -> StatusResult:
    return cast("StatusResult", client().request("GET", "/status", autostart=False))


STOP_WAIT = 30.0  # seconds `daemon stop` waits for the daemon to exit


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie (exited, not yet reaped by its parent) does not."""
    import psutil  # daemon stop only: never on a polled command's path

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def daemon_stop() -> MessageResult:
    """Ask the daemon to shut down and wait, bounded, until its process is gone."""
    c = client()
    if not c.reachable():
        return {"success": True, "message": "the daemon is not running"}
    pid = int(c.request("POST", "/shutdown", autostart=False)["pid"])
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        raise OperationFailed(
            f"the daemon (pid {pid}) is still running {STOP_WAIT:g}s after it was asked to stop;"
            f" see its log, or end it with kill {pid}"
        )
    return {"success": True, "message": f"daemon (pid {pid}) stopped", "pid": pid}


def daemon_run(
    restore: bool,
    apply_file: str | None = None,
    shard: str | None = None,
    metrics_addr: str | None = None,
) -> None:
    from streamalchemy import daemon
    from streamalchemy.settings import parse_addr

    settings = load_settings()
    if metrics_addr is not None:  # the flag wins over the environment and config.toml
        try:
            settings = settings._replace(metrics_addr=parse_addr(metrics_addr))
        except ValueError as exc:
            raise InvalidInput(f"--metrics-addr {metrics_addr!r} is invalid: {exc}") from None
    try:
        apply = None
        if apply_file is not None or shard is not None:  # apply's modules only when asked
            from streamalchemy.apply import commands as apply_commands

            apply = apply_commands.daemon_apply(apply_file, shard, settings)
        daemon.run(settings, restore=restore, apply=apply)
    except StreamAlchemyError as exc:
        # An autostarting command waits for this daemon: it reads why it gave up.
        launch_failed(settings, str(exc))
        raise


RESTART_WAIT = 120.0  # seconds `daemon restart` waits for the new daemon's answer


def daemon_restart() -> DaemonRestartResult:
    """Replace the running daemon with the code installed now; start one if none runs.

    The daemon checks that the installed code imports, answers, and re-executes itself
    in place; the status asked next waits in the socket's backlog and is answered by
    the new image (its ``started_at`` is not the old one's).
    """
    c = client()
    if not c.reachable():
        c.start_daemon()
        now = cast("StatusResult", c.request("GET", "/status", autostart=False))
        return {
            "success": True,
            "message": f"the daemon was not running: started {now['version']} (pid {now['pid']})",
            "pid": now["pid"],
            "version": now["version"],
            "previous_version": None,
            "live_restore": bool(now.get("live_restore", False)),
        }
    before = cast("StatusResult", c.request("GET", "/status", autostart=False))
    asked = c.request("POST", "/restart", autostart=False, timeout=RESTART_WAIT)
    deadline = time.monotonic() + RESTART_WAIT
    while True:
        try:
            now = cast(
                "StatusResult", c.request("GET", "/status", autostart=False, timeout=RESTART_WAIT)
            )
        except DaemonUnreachable as exc:
            log = c.settings.log_dir / "daemon.log"
            raise OperationFailed(f"the daemon did not come back ({exc}); see {log}") from None
        if now.get("started_at") != before.get("started_at") or now["pid"] != before["pid"]:
            break
        if time.monotonic() > deadline:
            raise OperationFailed(
                f"the daemon (pid {before['pid']}) did not restart within {RESTART_WAIT:g}s"
            )
        time.sleep(0.05)
    live = bool(now.get("live_restore", False))
    kept = "no stream stopped" if live else "streams restarted (live restore is off)"
    return {
        "success": True,
        "message": f"daemon restarted in place (pid {now['pid']}): "
        f"{asked['previous_version']} -> {now['version']}; {kept}",
        "pid": now["pid"],
        "version": now["version"],
        "previous_version": str(asked["previous_version"]),
        "live_restore": live,
    }


def service_install(
    user: bool | None, print_only: bool, run_as: str | None, no_systemctl: bool
) -> dict[str, Any]:
    from streamalchemy.deploy import service

    flavour = service.flavour_for(user)
    unit = service.build(flavour, os.environ, run_as)
    if print_only:
        return {"success": True, "path": str(unit.path), "flavour": flavour, "unit": unit.text}
    use = not no_systemctl and service.systemctl_usable(flavour)
    return service.install(unit, use_systemctl=use, daemon_running=client().reachable())


def service_uninstall(user: bool | None, no_systemctl: bool) -> dict[str, Any]:
    from streamalchemy.deploy import service

    flavour = service.flavour_for(user)
    use = not no_systemctl and service.systemctl_usable(flavour)
    return service.uninstall(flavour, os.environ, use_systemctl=use)


def follow(
    paths: dict[str, str],
    interval: float = 0.5,
    offsets: dict[str, int] | None = None,
    every_stream: bool = False,
) -> Iterator[tuple[str, str]]:
    """Yield (name, line) for lines appended to each log, following rotation like ``tail -F``.

    Runs until the caller stops iterating (Ctrl-C); starts at the end of each file.
    With ``every_stream``, the logs of streams started later are followed too (as pm2's),
    from their first line written after this began.
    """

    from streamalchemy.client.logfollow import Follower

    offsets = offsets or {}
    followers = {name: Follower(path, offsets.get(name)) for name, path in paths.items()}
    directory = load_settings().log_dir / "streams"
    # Now, not at the first line asked for: a stream started after this call is new.
    sizes = _log_sizes(directory) if every_stream else {}
    return _follow(followers, interval, directory if every_stream else None, sizes)


def _follow(
    followers: dict[str, Follower], interval: float, directory: Path | None, sizes: dict[str, int]
) -> Iterator[tuple[str, str]]:
    from streamalchemy.client.logfollow import Follower

    while True:
        if directory is not None:
            for name, path in _logs_in(directory).items():
                if name not in followers:
                    followers[name] = Follower(str(path), sizes.get(name, 0))
        quiet = True
        for name, follower in list(followers.items()):
            for line in follower.read_lines():
                quiet = False
                yield name, line
        if quiet:
            time.sleep(interval)


def _logs_in(directory: Path) -> dict[str, Path]:
    """Each stream's log in ``directory``, by name (rotated copies ``NAME.log.1`` aside)."""
    try:
        found = list(directory.glob("*.log"))
    except OSError:
        return {}
    return {p.name[:-4]: p for p in found if is_valid_name(p.name[:-4])}


def _log_sizes(directory: Path) -> dict[str, int]:
    sizes = {}
    for name, path in _logs_in(directory).items():
        try:
            sizes[name] = path.stat().st_size
        except OSError:
            continue
    return sizes
