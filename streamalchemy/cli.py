"""The ``streamalchemy`` command: parse, ask the daemon (or the state file), print.

Typer declarations only: nothing here starts FFmpeg or writes the state file itself.
How a result or a failure is printed is ``client.report``; human output lives in
``client.render`` and imports rich only when a person is reading.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from streamalchemy import __version__
from streamalchemy.client import commands, report, typerparts
from streamalchemy.client.helpwords import Typer
from streamalchemy.errors import InvalidInput, OperationFailed, StreamAlchemyError

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
        parser=typerparts.output_format,
    ),
]


NameArg = Annotated[
    str,
    typer.Argument(metavar="NAME", help="The stream.", autocompletion=typerparts.complete_names),
]
NamesArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="NAME...", help="The streams.", autocompletion=typerparts.complete_names
    ),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every stream.")]


@app.command()
def start(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Stream name: letters, digits, _ and -, 1-64.")
    ],
    file: Annotated[str | None, typerparts.start_option("file")] = None,
    url: Annotated[str | None, typerparts.start_option("url")] = None,
    testsrc: Annotated[bool, typerparts.start_option("testsrc")] = False,
    codec: Annotated[str | None, typerparts.start_option("codec")] = None,
    resolution: Annotated[str | None, typerparts.start_option("resolution")] = None,
    fps: Annotated[str | None, typerparts.start_option("fps")] = None,
    audio: Annotated[str | None, typerparts.start_option("audio")] = None,
    hwaccel: Annotated[str | None, typerparts.start_option("hwaccel")] = None,
    duration: Annotated[str | None, typerparts.start_option("duration")] = None,
    output: Annotated[str | None, typerparts.start_option("output")] = None,
    restart: Annotated[str | None, typerparts.start_option("restart")] = None,
    priority: Annotated[int | None, typerparts.start_option("priority")] = None,
    replace: Annotated[bool, typerparts.start_option("replace")] = False,
    overwrite: Annotated[bool, typerparts.start_option("overwrite")] = False,
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

    report.emit(as_json, action, show)


@app.command()
def stop(names: NamesArg = None, all_streams: AllOpt = False, as_json: JsonOpt = False) -> None:
    """Stop streams and remove them from the state file."""

    def show(result: Any) -> None:
        print(
            f"stopped: {', '.join(result['stopped'])}" if result["stopped"] else "nothing to stop"
        )

    report.emit(as_json, lambda: commands.stop(names or [], all_streams), show)


@app.command("list")
def list_streams(wide: WideOpt = False, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """Show the daemon's streams with live figures, and saved streams that are not running.

    Name, status and time left always show; at a narrow terminal other columns drop
    out (source and output first), --wide shows them all.
    """
    report.emit(as_json, commands.list_streams, report.view("streams", wide=wide or fmt == "wide"))


@app.command()
def saved(wide: WideOpt = False, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """Show the state file's entries (works while the daemon is down)."""
    report.emit(as_json, commands.saved, report.view("saved", wide=wide or fmt == "wide"))


@app.command()
def clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Empty the state file (backed up first); running streams are untouched."""
    if not yes:
        if not sys.stdin.isatty():
            report.fail(InvalidInput("refusing to clear the state file without --yes"), as_json)
        if not typer.confirm("Remove every saved stream from the state file?", default=False):
            # Declining is not a usage error: exit 1, as apt-get's "Abort." does.
            report.fail(OperationFailed("cancelled; nothing was cleared"), as_json)

    report.emit(as_json, commands.clear, lambda r: print(r["message"]))


@app.command()
def restore(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report only; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore every saved stream that is not running, and report each."""
    show = report.view("restore", dry_run=dry_run)
    result = report.emit(as_json, lambda: commands.restore(dry_run), show)
    if not result["success"]:
        raise typer.Exit(1)


@app.command()
def logs(
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="[NAME]",
            help="The stream; without it, every stream's log, each line prefixed with its name.",
            autocompletion=typerparts.complete_names,
        ),
    ] = None,
    lines: Annotated[
        int,
        typer.Option(
            "-n",
            "--lines",
            metavar="N",
            help="How many lines (of each log), 0 or more.",
            parser=typerparts.whole(0),
        ),
    ] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a stream's FFmpeg log and lifecycle events, or every stream's."""
    report.logs(name, lines, follow, as_json)


@app.command()
def encoders(as_json: JsonOpt = False) -> None:
    """Show video encoders per codec, software and hardware, and which `auto` picks."""
    report.emit(as_json, commands.encoders, report.view("encoders"))


@app.command()
def restart(names: NamesArg = None, all_streams: AllOpt = False, as_json: JsonOpt = False) -> None:
    """Stop and start streams again with their saved spec; the deadline is kept."""

    def show(result: Any) -> None:
        print(f"restarted: {', '.join(result['restarted'])}" if result["restarted"] else "none")
        for failure in result["failed"]:
            print(f"failed: {failure['name']}: {failure['reason']}", file=sys.stderr)

    result = report.emit(as_json, lambda: commands.restart(names or [], all_streams), show)
    if not result["success"]:
        raise typer.Exit(1)


@app.command()
def show(name: NameArg, as_json: JsonOpt = False) -> None:
    """Everything about one stream: spec, output, status, deadline, restarts, last exits, log."""
    report.emit(as_json, lambda: commands.show(name), report.view("details"))


@app.command()
def top(wide: WideOpt = False, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """Watch the streams live, full screen, refreshed every second (q or Ctrl-C leaves).

    Failed and retrying streams come first, then the others, by name. When stdout is
    not a terminal, prints one snapshot and exits.
    """
    raise typer.Exit(report.top(wide or fmt == "wide", as_json))


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

    result = report.emit(
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
            parser=typerparts.whole(1),
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

    report.emit(
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
        report.fail(exc, False)


@daemon_app.command("stop")
def daemon_stop(as_json: JsonOpt = False) -> None:
    """Stop the daemon gracefully; its streams come back at its next launch."""
    report.emit(as_json, commands.daemon_stop, lambda r: print(r["message"]))


@daemon_app.command("restart")
def daemon_restart(as_json: JsonOpt = False) -> None:
    """Replace the daemon with the code installed now (an upgrade), in place; with live
    restore on, no stream stops. Starts the daemon when it is not running."""
    report.emit(as_json, commands.daemon_restart, lambda r: print(r["message"]))


@daemon_app.command("status")
def daemon_status(as_json: JsonOpt = False) -> None:
    """Show the daemon's pid, version, uptime, home, installation, paths and streams."""
    report.emit(as_json, commands.daemon_status, report.view("status"))


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

    report.emit(
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

    report.emit(as_json, lambda: commands.service_uninstall(user, no_systemctl), show)


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
    report.run_app(app)
