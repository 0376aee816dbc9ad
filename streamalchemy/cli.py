"""The ``streamalchemy`` command: parse, ask the daemon (or the state file), print.

Nothing here starts FFmpeg or writes the state file itself. Human output lives in
``render`` and imports rich only when a person is reading; ``--json`` paths stay lean.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer

from streamalchemy import __version__, actions
from streamalchemy.actions import client
from streamalchemy.errors import InvalidInput, StreamAlchemyError
from streamalchemy.settings import load_settings

app = typer.Typer(
    name="streamalchemy",
    help="Streams that keep running: FFmpeg supervised by a daemon, restored after restarts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
daemon_app = typer.Typer(help="Run, stop and inspect the background daemon.", no_args_is_help=True)
app.add_typer(daemon_app, name="daemon")
service_app = typer.Typer(
    help="Run the daemon as a systemd service, so that streams come back after a reboot.",
    no_args_is_help=True,
)
app.add_typer(service_app, name="service")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


class Codec(StrEnum):
    h264 = "h264"
    h265 = "h265"
    mpeg4 = "mpeg4"
    copy = "copy"


class Resolution(StrEnum):
    r480 = "480"
    r720 = "720"
    r1080 = "1080"
    r1440 = "1440"
    r2160 = "2160"


class Audio(StrEnum):
    aac = "aac"
    pcm_alaw = "pcm_alaw"
    none = "none"


class HwAccel(StrEnum):
    none = "none"
    auto = "auto"
    nvenc = "nvenc"
    vaapi = "vaapi"
    qsv = "qsv"
    videotoolbox = "videotoolbox"


class Restart(StrEnum):
    on_failure = "on-failure"
    always = "always"
    never = "never"


def _fail(exc: StreamAlchemyError, as_json: bool) -> NoReturn:
    raise typer.Exit(actions.report_failure(exc, as_json))


def _emit(
    as_json: bool, action: Callable[[], dict[str, Any]], show: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Run ``action``; print its result as JSON or through ``show``; map errors to exit codes."""
    try:
        result = action()
    except StreamAlchemyError as exc:
        _fail(exc, as_json)
    if as_json:
        print(json.dumps(result))
    else:
        show(result)
    return result


def _abs_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


@app.command()
def start(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Stream name: letters, digits, _ and -, 1-64.")
    ],
    file: Annotated[str | None, typer.Option(help="Loop a local video file.")] = None,
    url: Annotated[str | None, typer.Option(help="Relay an RTSP or other network URL.")] = None,
    testsrc: Annotated[bool, typer.Option("--testsrc", help="A synthetic test pattern.")] = False,
    codec: Annotated[Codec, typer.Option(help="Video codec; copy = no re-encode.")] = Codec.h264,
    resolution: Annotated[
        Resolution | None, typer.Option(help="Output height. [default: 1080]")
    ] = None,
    fps: Annotated[
        int | None, typer.Option(min=1, max=120, help="Frames per second. [default: 15]")
    ] = None,
    audio: Annotated[Audio, typer.Option(help="Audio codec.")] = Audio.none,
    hwaccel: Annotated[
        HwAccel | None, typer.Option(help="Hardware encoder. [default: none]")
    ] = None,
    duration: Annotated[
        str, typer.Option(help="0 = unlimited; hours (1.5) or 90m, 2h, 45s, 1h30m.")
    ] = "0",
    output: Annotated[
        str | None,
        typer.Option(
            help="rtsp:// rtmp:// srt:// udp:// URL, hls, null or a file path. "
            "[default: $STREAMALCHEMY_RTSP_URL/NAME]"
        ),
    ] = None,
    restart: Annotated[Restart, typer.Option(help="When FFmpeg dies.")] = Restart.on_failure,
    priority: Annotated[int, typer.Option(help="Higher is restored first.")] = 0,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a stream of this name.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a stream, wait until FFmpeg runs, save it, and print its output URL."""
    sources = [s for s in (file, url, testsrc or None) if s is not None]
    if len(sources) != 1:
        _fail(InvalidInput("give exactly one source: --file PATH, --url URL or --testsrc"), as_json)
    body: dict[str, Any] = {
        "name": name,
        "codec": codec.value,
        "resolution": resolution.value if resolution else None,
        "fps": fps,
        "audio": audio.value,
        "hwaccel": hwaccel.value if hwaccel else None,
        "duration": duration,
        "restart": restart.value,
        "priority": priority,
        "replace": replace,
    }
    if file is not None:
        body["file"] = _abs_path(file)
    elif url is not None:
        body["url"] = url
    else:
        body["testsrc"] = True
    if output is not None:
        is_path = output not in ("null", "hls") and "://" not in output
        body["output"] = _abs_path(output) if is_path else output

    def show(result: dict[str, Any]) -> None:
        stream = result["stream"]
        print(stream["output"])
        if sys.stderr.isatty():
            print(
                f"{stream['name']} started (pid {stream['pid']}, {stream['encoder']})",
                file=sys.stderr,
            )

    _emit(as_json, lambda: client().request("POST", "/streams", body), show)


@app.command()
def stop(
    names: Annotated[
        list[str] | None, typer.Argument(metavar="NAME", help="Streams to stop.")
    ] = None,
    all_streams: Annotated[bool, typer.Option("--all", help="Stop every stream.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop streams and remove them from the state file."""
    if bool(names) == all_streams:
        _fail(InvalidInput("name the streams to stop, or give --all"), as_json)
    body = {"names": names or [], "all": all_streams}

    def action() -> dict[str, Any]:
        reply = client().request("POST", "/stop", body)
        return {"success": True, "stopped": reply["stopped"]}

    def show(result: dict[str, Any]) -> None:
        print(
            f"stopped: {', '.join(result['stopped'])}" if result["stopped"] else "nothing to stop"
        )

    _emit(as_json, action, show)


@app.command("list")
def list_streams(as_json: JsonOpt = False) -> None:
    """Show the daemon's streams with live figures, and saved streams that are not running."""

    def show(result: dict[str, Any]) -> None:
        from streamalchemy import render

        render.streams(result)

    _emit(as_json, actions.list_streams, show)


@app.command()
def saved(as_json: JsonOpt = False) -> None:
    """Show the state file's entries (works while the daemon is down)."""

    def show(result: dict[str, Any]) -> None:
        from streamalchemy import render

        render.saved(result)

    _emit(as_json, actions.saved, show)


@app.command()
def clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Empty the state file (backed up first); running streams are untouched."""
    if not yes:
        if not sys.stdin.isatty():
            _fail(InvalidInput("refusing to clear the state file without --yes"), as_json)
        if not typer.confirm("Remove every saved stream from the state file?", default=False):
            _fail(InvalidInput("cancelled; nothing was cleared"), as_json)

    _emit(as_json, actions.clear, lambda r: print(r["message"]))


@app.command()
def restore(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report only; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore every saved stream that is not running, and report each."""

    def show(result: dict[str, Any]) -> None:
        from streamalchemy import render

        render.restore(result)

    result = _emit(as_json, lambda: actions.restore(dry_run), show)
    if not result["success"]:
        raise typer.Exit(1)


@app.command()
def logs(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The stream.")],
    lines: Annotated[int, typer.Option("-n", "--lines", min=0, help="How many lines.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a stream's FFmpeg log and lifecycle events."""
    if as_json and follow:
        _fail(
            InvalidInput("--follow prints lines as they come; it cannot be combined with --json"),
            as_json,
        )
    result = _emit(
        as_json,
        lambda: client().request("GET", f"/streams/{name}/logs?lines={lines}"),
        lambda r: print("\n".join(r["lines"])) if r["lines"] else None,
    )
    if follow:
        from streamalchemy.render import follow_file

        follow_file(result["path"])


@app.command()
def encoders(as_json: JsonOpt = False) -> None:
    """Show video encoders per codec, software and hardware, and which `auto` picks."""
    from streamalchemy import encoders as enc

    def action() -> dict[str, Any]:
        settings = load_settings()
        return {"success": True, **enc.report(enc.detect(settings.ffmpeg, settings.data_dir))}

    def show(result: dict[str, Any]) -> None:
        from streamalchemy import render

        render.encoders(result)

    _emit(as_json, action, show)


@app.command()
def top(as_json: JsonOpt = False) -> None:
    """Watch the streams live, full screen, refreshed every second (q or Ctrl-C leaves).

    Failed and retrying streams come first, then the others, by name. When stdout is
    not a terminal, prints one snapshot and exits.
    """
    if as_json:
        _emit(True, actions.list_streams, print)
        return
    from streamalchemy import top as view
    from streamalchemy.render import console

    fetch = view.fetcher(actions.client())
    try:
        code = view.live(fetch, console) if console.is_terminal else view.once(fetch, console)
    except StreamAlchemyError as exc:
        _fail(exc, False)
    raise typer.Exit(code)


@daemon_app.command("run")
def daemon_run(
    no_restore: Annotated[
        bool, typer.Option("--no-restore", help="Do not replay the state file.")
    ] = False,
    metrics_addr: Annotated[
        str | None,
        typer.Option(
            "--metrics-addr",
            metavar="HOST:PORT",
            help="Also serve GET /metrics, and nothing else, over TCP on HOST:PORT "
            "[env: STREAMALCHEMY_METRICS_ADDR; default: the socket only].",
        ),
    ] = None,
) -> None:
    """Run the daemon in the foreground (for systemd's ExecStart=)."""
    from streamalchemy import daemon
    from streamalchemy.settings import parse_addr

    try:
        flags = {}
        if metrics_addr is not None:
            try:
                flags["metrics_addr"] = parse_addr(metrics_addr)
            except ValueError as exc:
                raise InvalidInput(f"--metrics-addr {metrics_addr!r} is invalid: {exc}") from None
        daemon.run(load_settings(flags), restore=not no_restore)
    except StreamAlchemyError as exc:
        _fail(exc, False)


@daemon_app.command("stop")
def daemon_stop(as_json: JsonOpt = False) -> None:
    """Stop the daemon gracefully; its streams come back at its next launch."""

    _emit(as_json, actions.daemon_stop, lambda r: print(r["message"]))


@daemon_app.command("status")
def daemon_status(as_json: JsonOpt = False) -> None:
    """Show the daemon's pid, version, uptime, paths and number of streams."""

    def show(result: dict[str, Any]) -> None:
        from streamalchemy import render

        render.status(result)

    _emit(as_json, actions.daemon_status, show)


FlavourOpt = Annotated[
    bool | None,
    typer.Option(
        "--user/--system",
        help="A user unit (starts at login, or at boot with lingering) or a system unit "
        "(starts at boot). [default: --system for root, else --user]",
    ),
]
NoSystemctlOpt = Annotated[
    bool,
    typer.Option("--no-systemctl", help="Change the unit file only; print the systemctl commands."),
]


@service_app.command("install")
def service_install(
    user: FlavourOpt = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the unit on stdout; write nothing.")
    ] = False,
    run_as: Annotated[
        str | None,
        typer.Option(help="The system unit's user. [default: $SUDO_USER, else you]"),
    ] = None,
    no_systemctl: NoSystemctlOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a systemd unit that runs `streamalchemy daemon run`, then enable and start it."""
    from streamalchemy import service

    flavour = service.flavour_for(user)

    def action() -> dict[str, Any]:
        unit = service.build(flavour, os.environ, run_as)
        if print_only:
            return {"success": True, "path": str(unit.path), "flavour": flavour, "unit": unit.text}
        use = not no_systemctl and service.systemctl_usable(flavour)
        return service.install(unit, use_systemctl=use, daemon_running=client().reachable())

    def show(result: dict[str, Any]) -> None:
        if print_only:
            print(result["unit"], end="")
        else:
            print(service.summary(result))

    _emit(as_json, action, show)


@service_app.command("uninstall")
def service_uninstall(
    user: FlavourOpt = None, no_systemctl: NoSystemctlOpt = False, as_json: JsonOpt = False
) -> None:
    """Stop and disable the systemd unit and remove it; saved streams stay saved."""
    from streamalchemy import service

    flavour = service.flavour_for(user)

    def action() -> dict[str, Any]:
        use = not no_systemctl and service.systemctl_usable(flavour)
        return service.uninstall(flavour, os.environ, use_systemctl=use)

    _emit(as_json, action, lambda r: print(service.summary(r)))


def _version(value: bool) -> None:
    if value:
        print(f"streamalchemy {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """Streams that keep running: FFmpeg supervised by a daemon, restored after restarts."""


def main() -> None:
    """Console entry point: usage errors become one JSON document too under ``--json``."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="streamalchemy", standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        format_message = getattr(exc, "format_message", None)
        if format_message is None or not isinstance(getattr(exc, "exit_code", None), int):
            raise
        # A usage error (wrong option, bad value, missing argument): one line, as
        # every other error, pointing at the command's help.
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "streamalchemy"
        message = format_message().replace("Value error, ", "").rstrip(".")
        if not message:  # the help was shown instead of running nothing
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        message += f" (see '{where} --help')"
        if "--json" in sys.argv[1:]:
            print(json.dumps({"success": False, "message": message}))
        print(f"streamalchemy: {message}", file=sys.stderr)
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    sys.exit(code if isinstance(code, int) else 0)
