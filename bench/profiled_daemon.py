"""``streamalchemy daemon run`` under cProfile, switched on and off by signals.

Usage: python -m bench.profiled_daemon OUT.prof [--from-start] [daemon run options]

SIGUSR1 starts profiling the main thread (where the event loop runs), SIGUSR2
stops it and writes the stats to OUT.prof; with --from-start profiling runs from
the first line of the daemon. Stats are also written when the daemon exits.
"""

from __future__ import annotations

import cProfile
import signal
import sys
from types import FrameType

from streamalchemy.client.fastpath import main


def run(argv: list[str]) -> None:
    out, rest = argv[0], argv[1:]
    prof = cProfile.Profile()
    on = False

    def start(_sig: int = 0, _frame: FrameType | None = None) -> None:
        nonlocal on
        if not on:
            prof.enable()
            on = True

    def stop(_sig: int = 0, _frame: FrameType | None = None) -> None:
        nonlocal on
        if on:
            prof.disable()
            on = False
            prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    if rest[:1] == ["--from-start"]:
        rest = rest[1:]
        start()
    sys.argv = ["streamalchemy", "daemon", "run", *rest]
    try:
        main()
    finally:
        stop()


if __name__ == "__main__":
    run(sys.argv[1:])
