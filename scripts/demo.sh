#!/usr/bin/env bash
# The main job, end to end, on this machine: install what is missing, start a test
# pattern streaming to HLS, restart the daemon, see the stream come back with its
# remaining time, and prove the output plays.
#
# Usage: bash scripts/demo.sh [--keep]
#   Everything lives in ./demo-home (its own STREAMALCHEMY_HOME): your own streams,
#   if any, are never touched. At the end the demo stops what it started; with
#   --keep (or DEMO_KEEP=1) the stream keeps running for you to watch, and the
#   commands to stop it are printed.
set -euo pipefail
cd "$(dirname "$0")/.."

keep="${DEMO_KEEP:-0}"
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

# Only the demo's home counts: settings that could point elsewhere are dropped.
unset STREAMALCHEMY_SOCKET STREAM_PERSISTENCE_FILE ENABLE_STREAM_PERSISTENCE \
    STREAMALCHEMY_AUTOSTART STREAMALCHEMY_RTSP_URL
export STREAMALCHEMY_HOME="$PWD/demo-home"
# A Unix socket path holds ~107 bytes; a deep checkout gets a short one in /tmp.
if [ "${#STREAMALCHEMY_HOME}" -gt 80 ]; then
    export STREAMALCHEMY_SOCKET="/tmp/streamalchemy-demo-$(id -u).sock"
fi
env_prefix="STREAMALCHEMY_HOME=$STREAMALCHEMY_HOME${STREAMALCHEMY_SOCKET:+ STREAMALCHEMY_SOCKET=$STREAMALCHEMY_SOCKET}"

step "installing what is missing (FFmpeg, .venv)"
bash scripts/bootstrap.sh
sa="$PWD/.venv/bin/streamalchemy"
py="$PWD/.venv/bin/python"
# Tables as wide as they need, even when this output goes to a file or a pipe.
export COLUMNS="${COLUMNS:-200}"
"$sa" --version

# Whatever happens from here, a failed demo leaves no daemon or FFmpeg behind.
finish() {
    code=$?
    if [ "$code" -ne 0 ] || [ "$keep" != 1 ]; then
        "$sa" daemon stop >/dev/null 2>&1 || true
    fi
    if [ "$code" -ne 0 ]; then
        echo "demo: the daemon's log is $STREAMALCHEMY_HOME/logs/daemon.log" >&2
    fi
}
trap finish EXIT

step "a fresh demo home: $STREAMALCHEMY_HOME"
"$sa" daemon stop >/dev/null  # a daemon left by an earlier --keep run
rm -rf "$STREAMALCHEMY_HOME"

# The command shown is the command run.
start_args=(start demo --testsrc --output hls --duration 1h --resolution 720 --fps 15)
step "streamalchemy ${start_args[*]:0:5} \\"
echo "    ${start_args[*]:5}"
echo "(this starts the daemon too)"
playlist=$("$sa" "${start_args[@]}")
echo "$playlist"
"$sa" daemon status
field() {  # field PATH COMMAND...: one value (PATH like streams.0.pid) of a --json document
    local path="$1"
    shift
    "$sa" "$@" --json | "$py" -c '
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    value = value[int(key)] if key.isdigit() else value[key]
print(value)' "$path"
}
first_pid=$(field pid daemon status)

step "streamalchemy list"
"$sa" list
left_before=$(field streams.0.remaining_seconds list)

step "restarting the daemon: streamalchemy daemon stop"
"$sa" daemon stop
echo "while the daemon is down, the state file keeps the stream:"
"$sa" saved

step "streamalchemy list   (starts a new daemon, which restores the stream)"
running() {
    "$sa" list --json | "$py" -c '
import json, sys
doc = json.load(sys.stdin)
sys.exit(0 if [s["status"] for s in doc["streams"]] == ["running"] else 1)'
}
for _ in $(seq 100); do running && break; sleep 0.2; done
running || fail "the stream was not restored within 20 s"
restored_at=$("$py" -c 'import time; print(time.time())')
"$sa" list
second_pid=$(field pid daemon status)
[ "$first_pid" != "$second_pid" ] || fail "the daemon was not restarted"
left_after=$(field streams.0.remaining_seconds list)
"$py" -c "import sys; sys.exit(not 0 < float(sys.argv[2]) <= float(sys.argv[1]))" \
    "$left_before" "$left_after" || fail "the restored stream did not keep its deadline"
printf 'daemon pid %s -> %s; seconds left: %.0f before the restart, %.0f after it\n' \
    "$first_pid" "$second_pid" "$left_before" "$left_after"

step "proving the output plays: ffprobe $playlist"
probe() {
    ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,width,height,avg_frame_rate \
        -of default=noprint_wrappers=1 "$playlist" 2>/dev/null | awk '!seen[$0]++'
}
rewritten() {  # by the restored FFmpeg (a new start clears the old playlist first)
    [ -f "$playlist" ] && "$py" -c \
        'import os, sys; sys.exit(os.stat(sys.argv[1]).st_mtime <= float(sys.argv[2]))' \
        "$playlist" "$restored_at"
}
info=""
for _ in $(seq 60); do
    if rewritten; then info=$(probe) && [ -n "$info" ] && break; fi
    sleep 0.5
done
[ -n "$info" ] || fail "no playable playlist written since the restore: $playlist"
echo "$info"
grep -qx 'codec_name=h264' <<<"$info" || fail "expected H.264 video"
grep -qx 'height=720' <<<"$info" || fail "expected 720 lines"

step "live restore: streamalchemy daemon restart"
echo "(the daemon is replaced, FFmpeg is not)"
ffmpeg_before=$(field streams.0.pid list)
"$sa" daemon restart
ffmpeg_after=$(field streams.0.pid list)
[ "$ffmpeg_before" = "$ffmpeg_after" ] || fail "FFmpeg was restarted ($ffmpeg_before -> $ffmpeg_after)"
echo "FFmpeg pid $ffmpeg_before before the daemon restart and $ffmpeg_after after it:"
echo "the stream never stopped"

step "done: restored after a daemon stop, adopted across a restart; it plays"
if [ "$keep" = 1 ]; then
    cat <<EOF
It keeps running (for up to an hour). Watch it with either of:
    ffplay $playlist
    vlc $playlist
Stop it, and the daemon, with:
    $env_prefix $sa stop demo
    $env_prefix $sa daemon stop
EOF
else
    "$sa" stop demo
    "$sa" daemon stop
    cat <<EOF
Nothing is left running. To watch the stream, run the demo with --keep, then:
    ffplay $playlist
(or: vlc $playlist)
and stop it with:
    $env_prefix $sa daemon stop
EOF
fi
