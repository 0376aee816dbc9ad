"""CLI latency: ``list --json``, ``saved --json``, ``daemon status --json`` and
``show NAME --json`` while the daemon supervises 20 streams, against ``python -c pass``
from the same environment.

Each round runs every command once, in turn, so that the machine's noise falls on
all of them alike; the ratio against the target is the median of the per-round
ratios (paired: a command and the baseline of the same round). The figure reported
against the target is the console script (``streamalchemy``, what users and scripts
run); ``python -m streamalchemy`` is shown for reference.

``python -m bench.cli_latency [--quick] [--markdown]`` runs it alone; ``--markdown``
prints the section of docs/benchmarks.md, with the import profile of each command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import (
    PYTHON,
    BenchError,
    Daemon,
    Row,
    Sample,
    env_for,
    log,
    make_clip,
    run_cmd,
    temp_home,
    write_state,
)

STREAMS = 20
TARGET = 3.0
COMMANDS = (
    ("list", "--json"),
    ("saved", "--json"),
    ("daemon", "status", "--json"),
    ("show", "s000", "--json"),
)


def paired_ratio(values: list[float], baseline: list[float]) -> float:
    """The median over rounds of (command / baseline of the same round)."""
    return statistics.median(v / b for v, b in zip(values, baseline, strict=True))


# What pip writes for a console_scripts entry point (pip's own template).
_WRAPPER = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from streamalchemy.client.fastpath import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def console_script(home: Path, python: str = PYTHON) -> tuple[str, str]:
    """The ``streamalchemy`` console script of this environment, and how it was found."""
    installed = Path(python).parent / "streamalchemy"
    if installed.exists():
        # Named by its place in the environment, not by this machine's path.
        return str(installed), "the environment's installed `bin/streamalchemy`"
    # The environment has the dependencies but not the package: write exactly what
    # pip would install, with this interpreter and the work tree on PYTHONPATH.
    wrapper = home / "bin" / "streamalchemy"
    wrapper.parent.mkdir()
    wrapper.write_text(_WRAPPER.format(python=PYTHON))
    os.chmod(wrapper, 0o755)
    return str(wrapper), "pip's console-script wrapper (the venv has no streamalchemy installed)"


def run(
    quick: bool = False, profiles: dict[str, str] | None = None, python: str = PYTHON
) -> tuple[list[Row], str]:
    """Measure; with ``profiles``, also fill it with each command's import profile, taken
    against the same running daemon. ``python`` is the environment measured (its console
    script against its own ``python -c pass``), this one by default."""
    rounds = 5 if quick else 20
    rows = []
    with temp_home("cli") as home:
        clip = make_clip(home)
        write_state(home, clip, STREAMS)
        script, how = console_script(home, python)
        env = env_for(home)
        cmds: dict[str, list[str]] = {"baseline": [python, "-c", "pass"]}
        for args in COMMANDS:
            cmds[f"script {' '.join(args)}"] = [script, *args]
            cmds[f"module {' '.join(args)}"] = [python, "-m", "streamalchemy", *args]
        daemon = Daemon(home)
        try:
            daemon.wait_ready()
            daemon.wait_all_progress(STREAMS, 120)
            for name, cmd in cmds.items():  # warm-up, and a check that each one works
                run_cmd(cmd, env, home)
                if name != "baseline":
                    out = json.loads(_stdout(cmd, env, home))
                    if out.get("success") is not True:
                        raise BenchError(f"{' '.join(cmd)} answered {out}")
            samples = {name: Sample() for name in cmds}
            for _ in range(rounds):
                for name, cmd in cmds.items():
                    samples[name].values.append(run_cmd(cmd, env, home) * 1000)
            log("cli: " + ", ".join(f"{k} {v.median:.0f}ms" for k, v in samples.items()))
            for args in COMMANDS if profiles is not None else ():
                assert profiles is not None
                profiles[" ".join(args)] = _importtime_in(args, env, home, python=python)
            if len(daemon.get("/streams")["streams"]) != STREAMS:
                raise BenchError("the daemon lost streams during the CLI benchmark")
        finally:
            daemon.stop()
    base = "`python -c pass`"
    baseline = samples["baseline"].values
    for args in COMMANDS:
        label = " ".join(args)
        ratio = paired_ratio(samples[f"script {label}"].values, baseline)
        note = f"median of {rounds} rounds, {STREAMS} streams supervised; paired ratio {ratio:.2f}x"
        rows.append(Row("CLI latency", f"`streamalchemy {label}`", "ms",
                        samples[f"script {label}"], samples["baseline"], base,
                        target_ratio=TARGET, note=note))  # fmt: skip
    for args in COMMANDS:
        label = " ".join(args)
        rows.append(Row("CLI latency", f"`python -m streamalchemy {label}` (reference)", "ms",
                        samples[f"module {label}"], samples["baseline"], base,
                        note="for reference, no target"))  # fmt: skip
    return rows, how


def _stdout(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    return subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    ).stdout  # fmt: skip


def importtime(args: tuple[str, ...], top: int = 15) -> str:
    """The heaviest imports (cumulative microseconds) of one CLI command, daemon down."""
    with temp_home("imp") as home:
        return _importtime_in(args, env_for(home), home, top)


def _importtime_in(
    args: tuple[str, ...], env: dict[str, str], home: Path, top: int = 15, python: str = PYTHON
) -> str:
    proc = subprocess.run(
        [python, "-X", "importtime", "-m", "streamalchemy", *args],
        env=env, cwd=home, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        head, cum_us, name = line.split("|", 2)
        self_us = head.split(":", 1)[1]
        rows.append((int(cum_us), int(self_us), name.rstrip()))
    total = sum(r[1] for r in rows)
    lines = [f"all imports: {total / 1000:.1f} ms", "cumulative_ms  module"]
    for cum, _, name in sorted(rows, reverse=True)[:top]:
        lines.append(f"{cum / 1000:12.1f}  {name}")
    return "\n".join(lines)


def markdown(rows: list[Row], how: str, profiles: dict[str, str]) -> str:
    """The "CLI latency" section of docs/benchmarks.md."""
    lines = [
        "| command | median ms | `python -c pass` ms | paired ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.target_ratio is None or row.baseline is None:
            continue
        ratio = paired_ratio(row.result.values, row.baseline.values)
        lines.append(
            f"| {row.measure} | {row.result.median:.1f} | {row.baseline.median:.1f} | "
            f"{ratio:.2f}x | <= {row.target_ratio:g}x | {'yes' if ratio <= TARGET else 'NO'} |"
        )
    lines += ["", f"Console script: {how}.", ""]
    for label, profile in profiles.items():
        lines += [
            f"`python -X importtime -m streamalchemy {label}`, heaviest imports:",
            "",
            "```text",
            profile,
            "```",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print the docs section")
    parser.add_argument(
        "--python",
        default=PYTHON,
        help="the environment to measure, e.g. a venv with only the wheel installed",
    )
    args = parser.parse_args()
    profiles: dict[str, str] = {}
    rows, how = run(args.quick, profiles if args.markdown else None, args.python)
    if args.markdown:
        print(markdown(rows, how, profiles))
        return
    print(f"console script: {how}")
    for row in rows:
        print(json.dumps(row.to_json()))


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
