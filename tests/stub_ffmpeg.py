"""A stand-in for FFmpeg in the supervisor's in-process tests.

Writes ``-progress`` style key=value blocks on stdout, lines on stderr, and exits
on cue; SIGTERM ends it with 255, as it ends FFmpeg.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--every", type=float, default=0.02, help="seconds between progress blocks")
    p.add_argument("--blocks", type=int, default=-1, help="blocks before the end (-1: forever)")
    p.add_argument("--exit", type=int, default=0, help="exit code at the end")
    p.add_argument("--freeze", action="store_true", help="at the end, hang without progress")
    p.add_argument("--say", default="", help="a stderr line written just before the end")
    p.add_argument("--long-line", type=int, default=0, help="one stderr line of this many bytes")
    p.add_argument("--still-after", type=int, default=-1, help="output time stops at this frame")
    p.add_argument("--clamped", type=int, default=0, help="'Non-monotonous DTS' lines per block")
    p.add_argument("--out", default="", help="a file to create (refused if it exists, as -n)")
    p.add_argument("--no-frames", action="store_true", help="report progress, but no frame")
    args = p.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(255))
    if args.out:
        try:
            with Path(args.out).open("x") as f:
                f.write("recording\n")
        except FileExistsError:
            print(f"File '{args.out}' already exists. Exiting.", file=sys.stderr)
            sys.exit(1)
    if args.long_line:
        sys.stderr.write("x" * args.long_line + "\n")
        sys.stderr.flush()
    frame = 0
    while args.blocks < 0 or frame < args.blocks:
        frame += 1
        shown = frame if args.still_after < 0 else min(frame, args.still_after)
        sys.stdout.write(
            f"frame={0 if args.no_frames else frame}\nfps=25.0\nbitrate=100.0kbits/s\n"
            f"out_time_us={shown * 40000}\nspeed=1.0x\nprogress=continue\n"
        )
        sys.stdout.flush()
        for n in range(args.clamped):
            print(f"[hls @ 0x5] Non-monotonous DTS; previous: {n}, current: 0", file=sys.stderr)
        sys.stderr.flush()
        time.sleep(args.every)
    if args.say:
        print(args.say, file=sys.stderr, flush=True)
    while args.freeze:
        time.sleep(1)
    sys.exit(args.exit)


if __name__ == "__main__":
    main()
