"""The ``streamalchemy`` command: parse, ask the daemon (or the state file), print.

Nothing here starts FFmpeg or writes the state file itself. Human output lives in
``render`` and imports rich only when a person is reading; ``--json`` paths stay lean.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from streamalchemy import __version__
from streamalchemy.client import commands
from streamalchemy.client.fastpath import report_failure
from streamalchemy.client.helpwords import Typer
from streamalchemy.client.text import plain
from streamalchemy.core.spec import START_OPTIONS, check_option
from streamalchemy.errors import InvalidInput, StreamAlchemyError

app = Typer(
    name="streamalchemy",
    help="Streams that keep running: FFmpeg supervised by a daemon, restored after restarts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
daemon_app = Typer(help="Run, stop and inspect the background daemon.", no_args_is_help=True)
app.add_typer(daemon_app, name="daemon")
service_app = Typer(
    help="Run the daemon as a systemd service, so that streams come back after a reboot.",
    no_args_is_help=True,
)
app.add_typer(service_app, name="service")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _complete_names(incomplete: str) -> list[str]:
    """Stream names for the shell: the state file's and a running daemon's; never starts one."""
    try:
        return [n for n in commands.stream_names() if n.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the shell
        return []


def whole(least: int | None = None) -> Callable[[str], int]:
    """A parser of whole numbers (from ``least`` up), refusing in words."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a whole number") from None
        if least is not None and number < least:
            raise typer.BadParameter(f"{value} is less than {least}")
        return number

    return parse


def _start_option(key: str) -> Any:
    """The Typer option for a ``start`` option, built from ``spec.START_OPTIONS``."""
    option = START_OPTIONS[key]
    choices = option.choices

    def parse(value: str) -> str:
        try:
            check_option(key, value)
        except InvalidInput as exc:
            raise typer.BadParameter(str(exc)) from None
        return value

    def complete(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]

    # The default is in the help text, not the parameter: a None reaching the daemon
    # tells an explicit --resolution (refused with --codec copy) from the default.
    checked = bool(choices) or key in ("fps", "duration")
    return typer.Option(
        # "\[": rich would take a bare "[default: ...]" for markup and drop it.
        help=f"{option.help} \\[default: {option.default}]",
        show_default=False,
        metavar=f"[{'|'.join(choices)}]" if choices else option.metavar,
        parser=parse if checked else whole() if key == "priority" else None,
        autocompletion=complete if choices else None,
    )


def _fail(exc: StreamAlchemyError, as_json: bool) -> NoReturn:
    raise typer.Exit(report_failure(exc, as_json))


def _emit(as_json: bool, action: Callable[[], Any], show: Callable[[Any], None]) -> Any:
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


def _render(view: str, **options: Any) -> Callable[[Any], None]:
    """The rich view of ``render`` by name, imported only when a person reads it."""

    def show(result: Any) -> None:
        from streamalchemy.client import render

        getattr(render, view)(result, **options)

    return show


def _output_format(value: str) -> str:
    if value != "wide":
        raise typer.BadParameter(f"{value!r} is not wide (use --json for JSON)")
    return value


WideOpt = Annotated[
    bool,
    typer.Option("--wide", help="Every column, however narrow the terminal (else some drop out)."),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        metavar="wide",
        help="-o wide is --wide, as in kubectl. \\[default: the columns that fit]",
        show_default=False,
        parser=_output_format,
    ),
]


NameArg = Annotated[
    str, typer.Argument(metavar="NAME", help="The stream.", autocompletion=_complete_names)
]
NamesArg = Annotated[
    list[str] | None,
    typer.Argument(metavar="NAME...", help="The streams.", autocompletion=_complete_names),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every stream.")]


@app.command()
def start(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Stream name: letters, digits, _ and -, 1-64.")
    ],
    file: Annotated[str | None, typer.Option(help="Loop a local video file.")] = None,
    url: Annotated[str | None, typer.Option(help="Relay an RTSP or other network URL.")] = None,
    testsrc: Annotated[bool, typer.Option("--testsrc", help="A synthetic test pattern.")] = False,
    codec: Annotated[str | None, _start_option("codec")] = None,
    resolution: Annotated[str | None, _start_option("resolution")] = None,
    fps: Annotated[str | None, _start_option("fps")] = None,
    audio: Annotated[str | None, _start_option("audio")] = None,
    hwaccel: Annotated[str | None, _start_option("hwaccel")] = None,
    duration: Annotated[str | None, _start_option("duration")] = None,
    output: Annotated[str | None, _start_option("output")] = None,
    restart: Annotated[str | None, _start_option("restart")] = None,
    priority: Annotated[int | None, _start_option("priority")] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a stream of this name.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="A file output may replace an existing file at the first start. \\[default: off]",
            show_default=False,
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a stream, wait until FFmpeg runs, save it, and print its output URL.

    A limited stream (--duration) also prints when it ends, on stderr, so that the
    first line of stdout stays the output URL for scripts.
    """

    def action() -> Any:
        body = commands.start_body(
            name,
            file=file,
            url=url,
            testsrc=testsrc,
            output=output,
            replace=replace,
            overwrite=overwrite,
            codec=codec,
            resolution=resolution,
            fps=fps,
            audio=audio,
            hwaccel=hwaccel,
            duration=duration,
            restart=restart,
            priority=priority,
        )
        return commands.start(body)

    def show(result: Any) -> None:
        from streamalchemy.client.render import started

        started(result["stream"])

    _emit(as_json, action, show)


@app.command()
def stop(names: NamesArg = None, all_streams: AllOpt = False, as_json: JsonOpt = False) -> None:
    """Stop streams and remove them from the state file."""

    def show(result: Any) -> None:
        print(
            f"stopped: {', '.join(result['stopped'])}" if result["stopped"] else "nothing to stop"
        )

    _emit(as_json, lambda: commands.stop(names or [], all_streams), show)


@app.command("list")
def list_streams(wide: WideOpt = False, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """Show the daemon's streams with live figures, and saved streams that are not running.

    Name, status and time left always show; at a narrow terminal other columns drop
    out (source and output first), --wide shows them all.
    """
    _emit(as_json, commands.list_streams, _render("streams", wide=wide or fmt == "wide"))


@app.command()
def saved(wide: WideOpt = False, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """Show the state file's entries (works while the daemon is down)."""
    _emit(as_json, commands.saved, _render("saved", wide=wide or fmt == "wide"))


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

    _emit(as_json, commands.clear, lambda r: print(r["message"]))


@app.command()
def restore(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report only; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore every saved stream that is not running, and report each."""
    result = _emit(as_json, lambda: commands.restore(dry_run), _render("restore"))
    if not result["success"]:
        raise typer.Exit(1)


@app.command()
def logs(
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="[NAME]",
            help="The stream; without it, every stream's log, each line prefixed with its name.",
            autocompletion=_complete_names,
        ),
    ] = None,
    lines: Annotated[
        int,
        typer.Option(
            "-n",
            "--lines",
            metavar="N",
            help="How many lines (of each log), 0 or more.",
            parser=whole(0),
        ),
    ] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a stream's FFmpeg log and lifecycle events, or every stream's."""
    if as_json and follow:
        _fail(
            InvalidInput("--follow prints lines as they come; it cannot be combined with --json"),
            as_json,
        )
    if name is not None:
        result = _emit(
            as_json,
            lambda: commands.logs(name, lines),
            lambda r: print("\n".join(map(plain, r["lines"]))) if r["lines"] else None,
        )
        paths = {name: result["path"]}
        offsets = {name: result["offset"]}
    else:
        tails = _emit(
            as_json,
            lambda: {"success": True, "logs": commands.all_logs(lines)},
            lambda r: _print_prefixed({n: t["lines"] for n, t in r["logs"].items()}),
        )
        paths = {n: t["path"] for n, t in tails["logs"].items()}
        offsets = {n: t["offset"] for n, t in tails["logs"].items()}
    if follow:
        width = max(map(len, paths), default=0)
        try:
            for stream, line in commands.follow(paths, offsets=offsets):
                print(_prefixed(stream, line, width) if name is None else plain(line), flush=True)
        except KeyboardInterrupt:
            pass


def _prefixed(name: str, line: str, width: int) -> str:
    return f"{name.ljust(width)} | {plain(line)}"


def _print_prefixed(tails: dict[str, list[str]]) -> None:
    width = max(map(len, tails), default=0)
    for stream, lines in tails.items():
        for line in lines:
            print(_prefixed(stream, line, width))


@app.command()
def encoders(as_json: JsonOpt = False) -> None:
    """Show video encoders per codec, software and hardware, and which `auto` picks."""
    _emit(as_json, commands.encoders, _render("encoders"))


@app.command()
def restart(names: NamesArg = None, all_streams: AllOpt = False, as_json: JsonOpt = False) -> None:
    """Stop and start streams again with their saved spec; the deadline is kept."""

    def show(result: Any) -> None:
        print(f"restarted: {', '.join(result['restarted'])}" if result["restarted"] else "none")
        for failure in result["failed"]:
            print(f"failed: {failure['name']}: {failure['reason']}", file=sys.stderr)

    result = _emit(as_json, lambda: commands.restart(names or [], all_streams), show)
    if not result["success"]:
        raise typer.Exit(1)


@app.command()
def show(name: NameArg, as_json: JsonOpt = False) -> None:
    """Everything about one stream: spec, output, status, deadline, restarts, last exits, log."""
    _emit(as_json, lambda: commands.show(name), _render("details"))


@app.command()
def top(wide: WideOpt = False, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """Watch the streams live, full screen, refreshed every second (q or Ctrl-C leaves).

    Failed and retrying streams come first, then the others, by name. When stdout is
    not a terminal, prints one snapshot and exits.
    """
    if as_json:
        _emit(True, commands.list_streams, print)
        return
    from streamalchemy.client import top as view
    from streamalchemy.client.render import console

    fetch = view.fetcher(commands.client())
    wide = wide or fmt == "wide"
    try:
        if console.is_terminal:
            code = view.live(fetch, console, wide=wide)
        else:
            code = view.once(fetch, console, wide=wide)
    except StreamAlchemyError as exc:
        _fail(exc, False)
    raise typer.Exit(code)


@app.command("apply")
def apply_cmd(
    file: Annotated[
        str, typer.Option("-f", "--file", metavar="FILE", help="The apply file (TOML).")
    ],
    prune: Annotated[
        bool, typer.Option("--prune", help="Also stop saved streams that are not in FILE.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan only; change nothing.")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            metavar="I/N",
            help="Keep only the streams of shard I of N. \\[default: every stream]",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make the running streams match a declarative file; print the plan and what it did.

    FILE is TOML: one table per stream, named \\[streams.NAME], whose keys are the
    options of start (file, url or testsrc = true; codec, resolution, fps, audio,
    hwaccel, duration, output, restart, priority), for example:

      \\[streams.cam1]
      file = "/srv/video/loop.mp4"
      codec = "h264"
      resolution = 720
      duration = "2h"
      priority = 10

      \\[streams.lobby]
      url = "rtsp://${LOBBY_USER}:${LOBBY_PASS}@10.0.0.7/stream"
      codec = "copy"

    Missing streams are created, changed ones replaced (each change printed) and
    unchanged ones left running; --prune also stops the saved streams that are not in
    FILE. Applying the same file again changes nothing. An invalid file changes
    nothing: exit 2, naming the stream and key at fault.
    """
    from streamalchemy.apply import commands as apply_commands

    result = _emit(
        as_json,
        lambda: apply_commands.apply_file(file, prune=prune, dry_run=dry_run, shard=shard),
        apply_commands.render_plan,
    )
    if not result["success"]:
        raise typer.Exit(1)


def _export_format(value: str) -> str:
    if value not in ("toml", "kubernetes"):
        raise typer.BadParameter(f"{value!r} is not one of toml, kubernetes")
    return value


@app.command("export")
def export_cmd(
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="[toml|kubernetes]",
            help="An apply file, or Kubernetes manifests (multi-document YAML).",
            parser=_export_format,
        ),
    ] = "toml",
    shards: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="With --format kubernetes: the replicas, one per shard, 1 or more.",
            parser=whole(1),
        ),
    ] = 1,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Write to FILE. \\[default: stdout]",
            show_default=False,
        ),
    ] = None,
    include_secrets: Annotated[
        bool, typer.Option("--include-secrets", help="Write literal URL credentials unmasked.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the saved streams as a file `apply` takes back, or as Kubernetes manifests."""
    from streamalchemy.apply import commands as apply_commands

    def show(result: Any) -> None:
        if result["output"] is None:
            sys.stdout.write(result["text"])
        else:
            print(f"exported {len(result['streams'])} stream(s) to {result['output']}")

    _emit(
        as_json,
        lambda: apply_commands.export(
            fmt=fmt, shards=shards, output=output, include_secrets=include_secrets
        ),
        show,
    )


@daemon_app.command("run")
def daemon_run(
    no_restore: Annotated[
        bool, typer.Option("--no-restore", help="Do not replay the state file.")
    ] = False,
    apply_file: Annotated[
        str | None,
        typer.Option(
            "--apply",
            metavar="FILE",
            help="Apply FILE after the restore and within 5 s of each change; prune only "
            "the streams that came from FILE. \\[default: none]",
            show_default=False,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            metavar="I/N|auto",
            help="With --apply: run only shard I of N; auto: I from the host name's trailing "
            "number, N from STREAMALCHEMY_SHARDS. \\[default: every stream]",
            show_default=False,
        ),
    ] = None,
    metrics_addr: Annotated[
        str | None,
        typer.Option(
            "--metrics-addr",
            metavar="HOST:PORT",
            help="Also serve GET /metrics, and nothing else, over TCP on HOST:PORT; "
            "wins over STREAMALCHEMY_METRICS_ADDR. \\[default: the socket only]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the daemon in the foreground (for systemd's ExecStart=)."""
    try:
        commands.daemon_run(
            restore=not no_restore, apply_file=apply_file, shard=shard, metrics_addr=metrics_addr
        )
    except StreamAlchemyError as exc:
        _fail(exc, False)


@daemon_app.command("stop")
def daemon_stop(as_json: JsonOpt = False) -> None:
    """Stop the daemon gracefully; its streams come back at its next launch."""
    _emit(as_json, commands.daemon_stop, lambda r: print(r["message"]))


@daemon_app.command("status")
def daemon_status(as_json: JsonOpt = False) -> None:
    """Show the daemon's pid, version, uptime, home, installation, paths and streams."""
    _emit(as_json, commands.daemon_status, _render("status"))


FlavourOpt = Annotated[
    bool | None,
    typer.Option(
        "--user/--system",
        help="A user unit (starts at login, or at boot with lingering) or a system unit "
        "(starts at boot). \\[default: --system for root, else --user]",
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
        typer.Option(
            metavar="USER", help="The system unit's user. \\[default: $SUDO_USER, else you]"
        ),
    ] = None,
    no_systemctl: NoSystemctlOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a systemd unit that runs `streamalchemy daemon run`, then enable and start it."""

    def show(result: Any) -> None:
        from streamalchemy.deploy import service

        if print_only:
            print(result["unit"], end="")
        else:
            print(service.summary(result))

    _emit(
        as_json,
        lambda: commands.service_install(user, print_only, run_as, no_systemctl),
        show,
    )


@service_app.command("uninstall")
def service_uninstall(
    user: FlavourOpt = None, no_systemctl: NoSystemctlOpt = False, as_json: JsonOpt = False
) -> None:
    """Stop and disable the systemd unit and remove it; saved streams stay saved."""

    def show(result: Any) -> None:
        from streamalchemy.deploy import service

        print(service.summary(result))

    _emit(as_json, lambda: commands.service_uninstall(user, no_systemctl), show)


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
