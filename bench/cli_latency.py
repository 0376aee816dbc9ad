"""CLI latency: ``list --json``, ``saved --json`` and ``daemon status --json`` while the
daemon supervises 20 streams, against ``python -c pass`` from the same environment.

Each round runs every command once, in turn, so that the machine's noise falls on
all of them alike. The figure reported against the target is the console script
(``streamalchemy``, what users and scripts run); ``python -m streamalchemy`` is
shown for reference.
"""

from __future__ import annotations

import argparse
import json
import os
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
TARGET = 6.0
COMMANDS = (("list", "--json"), ("saved", "--json"), ("daemon", "status", "--json"))

# What pip writes for a console_scripts entry point (pip's own template).
_WRAPPER = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from streamalchemy.main import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def console_script(home: Path) -> tuple[str, str]:
    """The ``streamalchemy`` console script of this environment, and how it was found."""
    installed = Path(PYTHON).parent / "streamalchemy"
    if installed.exists():
        return str(installed), f"`{installed}`"
    # The environment has the dependencies but not the package: write exactly what
    # pip would install, with this interpreter and the work tree on PYTHONPATH.
    wrapper = home / "bin" / "streamalchemy"
    wrapper.parent.mkdir()
    wrapper.write_text(_WRAPPER.format(python=PYTHON))
    os.chmod(wrapper, 0o755)
    return str(wrapper), "pip's console-script wrapper (the venv has no streamalchemy installed)"


def run(quick: bool = False) -> tuple[list[Row], str]:
    rounds = 5 if quick else 20
    rows = []
    with temp_home("cli") as home:
        clip = make_clip(home)
        write_state(home, clip, STREAMS)
        script, how = console_script(home)
        env = env_for(home)
        cmds: dict[str, list[str]] = {"baseline": [PYTHON, "-c", "pass"]}
        for args in COMMANDS:
            cmds[f"script {' '.join(args)}"] = [script, *args]
            cmds[f"module {' '.join(args)}"] = [PYTHON, "-m", "streamalchemy", *args]
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
            if len(daemon.get("/streams")["streams"]) != STREAMS:
                raise BenchError("the daemon lost streams during the CLI benchmark")
        finally:
            daemon.stop()
    base = "`python -c pass`"
    for args in COMMANDS:
        label = " ".join(args)
        note = f"median of {rounds} runs, {STREAMS} streams supervised"
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
    """The heaviest imports (cumulative microseconds) of one CLI command."""
    with temp_home("imp") as home:
        proc = subprocess.run(
            [PYTHON, "-X", "importtime", "-m", "streamalchemy", *args],
            env=env_for(home), cwd=home, capture_output=True, text=True, timeout=60,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, how = run(args.quick)
    print(f"console script: {how}")
    for row in rows:
        print(json.dumps(row.to_json()))


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
