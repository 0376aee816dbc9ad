"""Metrics and ``top`` end to end: the real daemon and FFmpeg, a real Prometheus, a terminal."""

from __future__ import annotations

import http.client
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    DAEMON,
    PER_STREAM,
    Daemon,
    cli,
    end_daemon_of,
    expressions,
    free_port,
    kill_tree,
    own_terminal,
    promtool_findings,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]

STREAMS = ("cam1", "cam2")
PROMETHEUS = shutil.which("prometheus")


# A saved stream whose file is gone: the launch restore skips it (and keeps it saved).
GONE = {
    "gone": {
        "config": {
            "video_codec": "h264",
            "resolution": "480",
            "target_fps": "5",
            "audio_enabled": "no",
            "audio_codec": "aac",
            "hardware_accel": "no",
            "duration_hours": "0",
            "stream_type": "file",
            "video_file_path": "/nonexistent/sa-metrics.mp4",
            "file_source_type": "custom",
            "output": "null",
        },
        "saved_at": 1703123456.789,
        "status": "active",
    }
}


class Metered:
    """One daemon serving metrics on a TCP port, with two cheap streams running."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        state = home / "active_streams.json"
        state.write_text(json.dumps(GONE))
        state.chmod(0o600)
        self.daemon = Daemon(home, "--metrics-addr", f"127.0.0.1:{port}")
        for name in STREAMS:
            started = cli(
                "start", name, "--testsrc", "--resolution", "480", "--fps", "5", "--output", "null"
            )
            assert started.returncode == 0, started.stderr

    def tcp(self, method: str, path: str, body: str | None = None) -> tuple[int, str, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body)
            reply = conn.getresponse()
            return reply.status, reply.getheader("Content-Type", ""), reply.read().decode()
        finally:
            conn.close()

    def over_socket(self, path: str) -> tuple[int, str, str]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.daemon.socket))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, body = raw.decode().partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), headers.get("Content-Type", ""), body

    def samples(self) -> dict[tuple[str, str], float]:
        status, _, text = self.tcp("GET", "/metrics")
        assert status == 200
        return {
            (s.name, s.labels.get("name", s.labels.get("result", ""))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture(scope="module")
def metered() -> Iterator[Metered]:
    home = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STREAMALCHEMY_HOME", str(home))
        env.setenv("STREAMALCHEMY_MEDIAMTX", "off")
        for var in (
            "STREAMALCHEMY_SOCKET",
            "STREAM_PERSISTENCE_FILE",
            "STREAMALCHEMY_METRICS_ADDR",
        ):
            env.delenv(var, raising=False)
        m = Metered(home, free_port())
        try:
            yield m
        finally:
            m.daemon.stop()
            end_daemon_of(home)
            shutil.rmtree(home, ignore_errors=True)


def test_every_contract_metric_per_stream_on_tcp_and_socket(metered: Metered) -> None:
    # fps is absent until FFmpeg's second report: wait for it rather than for time.
    wait_for(
        lambda: all(("streamalchemy_stream_fps", n) in metered.samples() for n in STREAMS),
        20,
        "fps of both streams",
        interval=0.5,
    )
    samples = metered.samples()
    for metric in PER_STREAM:
        if metric == "streamalchemy_stream_remaining_seconds":  # unlimited streams: absent
            assert not any(m == metric for m, _ in samples), metric
            continue
        for name in STREAMS:
            assert (metric, name) in samples, (metric, name)
    for metric in DAEMON:
        assert any(m == metric for m, _ in samples), metric
    assert samples[("streamalchemy_stream_up", "cam1")] == 1
    assert samples[("streamalchemy_stream_cpu_seconds_total", "cam1")] > 0
    assert samples[("streamalchemy_stream_memory_bytes", "cam1")] > 1 << 20
    assert samples[("streamalchemy_state_writes_total", "")] >= 2  # one per start
    assert samples[("streamalchemy_state_write_errors_total", "")] == 0
    assert samples[("streamalchemy_restore_results_total", "skipped")] == 1  # "gone"
    assert samples[("streamalchemy_restore_results_total", "failed")] == 0

    status, content_type, text = metered.over_socket("/metrics")
    assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert "NaN" not in text
    assert promtool_findings(text.encode()) == [] if shutil.which("promtool") else True


def test_counters_only_grow(metered: Metered) -> None:
    counters = [m for m in PER_STREAM + DAEMON if m.endswith("_total")]
    before = metered.samples()
    frames = [("streamalchemy_stream_frames_total", name) for name in STREAMS]
    # FFmpeg reports every 2 s: wait for the next report of every stream.
    wait_for(lambda: all(metered.samples()[k] > before[k] for k in frames), 20, "new frames")
    after = metered.samples()
    for (metric, label), value in before.items():
        if metric in counters:
            assert after[(metric, label)] >= value, (metric, label)


def test_counters_keep_growing_across_an_ffmpeg_restart(metered: Metered) -> None:
    def stream(name: str) -> dict[str, Any]:
        doc = json.loads(cli("list", "--json").stdout)
        return next(s for s in doc["streams"] if s["name"] == name)

    first = stream("cam2")
    wait_for(lambda: int(stream("cam2")["frames"]) > 0, 20, "frames of cam2")
    before = metered.samples()
    os.kill(int(first["pid"]), signal.SIGKILL)  # a crash
    wait_for(
        lambda: (
            stream("cam2")["pid"] not in (None, first["pid"])
            and stream("cam2")["status"] == "running"
        ),
        30,
        "cam2's FFmpeg to be restarted",
        interval=0.2,
    )
    after = metered.samples()
    for metric in ("frames_total", "cpu_seconds_total", "restarts_total"):
        key = (f"streamalchemy_stream_{metric}", "cam2")
        assert after[key] >= before[key], metric
    assert after[("streamalchemy_stream_restarts_total", "cam2")] >= 1


def test_tcp_address_serves_nothing_but_metrics(metered: Metered) -> None:
    refused = [
        ("GET", "/streams", None),
        ("POST", "/streams", json.dumps({"name": "evil", "testsrc": True, "output": "null"})),
        ("GET", "/status", None),
        ("GET", "/persistent_streams", None),
        ("POST", "/shutdown", None),
        ("DELETE", "/streams/cam1", None),
        ("POST", "/metrics", None),
        ("GET", "/", None),
    ]
    for method, path, body in refused:
        status, _, text = metered.tcp(method, path, body)
        assert status in (403, 404, 405, 413), (method, path, status)  # 413: a body
        assert "streamalchemy_" not in text
    names = {s["name"] for s in json.loads(cli("list", "--json").stdout)["streams"]}
    assert names == set(STREAMS)  # nothing was started or stopped over TCP
    assert metered.daemon.proc.poll() is None


@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="Prometheus is not installed (scripts/bootstrap.sh test installs Debian's prometheus)",
)
def test_a_real_prometheus_scrapes_every_stream(metered: Metered, tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: streamalchemy\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metered.port}']\n"
    )
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def query(expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                doc = json.load(reply)
        except urllib.error.HTTPError as exc:
            pytest.fail(f"Prometheus refused {expr!r}: {exc.read().decode()}")
        except OSError:
            return []
        assert doc["status"] == "success"
        return list(doc["data"]["result"])

    try:
        wait_for(
            lambda: len(query("streamalchemy_stream_up")) == len(STREAMS),
            30,
            "Prometheus to have scraped both streams",
            interval=0.5,
        )
        up = query("streamalchemy_stream_up")
        assert {r["metric"]["name"] for r in up} == set(STREAMS)
        (target,) = query('up{job="streamalchemy"}')
        assert target["value"][1] == "1"
        for expr in expressions():  # the Grafana dashboard's queries are valid PromQL
            query(expr)
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(10)
        except subprocess.TimeoutExpired:
            kill_tree(prometheus)


def read_screen(fd: int, until: list[bytes], timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while not all(word in seen for word in until):
        left = deadline - time.monotonic()
        assert left > 0, f"top did not show {until}: {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break  # the child closed the terminal
    return seen


def spawn_top(home: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    controller, terminal = pty.openpty()
    termios.tcsetwinsize(terminal, (30, 120))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamalchemy", "top"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=own_terminal,
        env={**os.environ, "STREAMALCHEMY_HOME": str(home), "TERM": "xterm-256color"},
    )
    return proc, controller, terminal


@pytest.mark.parametrize("leave", ["q", "ctrl-c"])
def test_top_in_a_terminal_shows_the_streams_and_leaves_cleanly(
    metered: Metered, leave: str
) -> None:
    proc, controller, terminal = spawn_top(metered.home)
    try:
        screen = read_screen(controller, [b"cam1", b"cam2", b"running"], 20)
        assert b"\x1b[?1049h" in screen  # the alternate screen: full-screen view
        echo_before = termios.tcgetattr(terminal)[3] & termios.ECHO
        if leave == "q":
            os.write(controller, b"q")
        else:
            os.write(controller, b"\x03")  # Ctrl-C: the terminal sends SIGINT
        assert proc.wait(10) in ((0,) if leave == "q" else (0, 130))
        attrs = termios.tcgetattr(terminal)
        assert attrs[3] & termios.ECHO and attrs[3] & termios.ICANON  # the terminal is back
        assert not echo_before  # and keys were not echoed while it ran
    finally:
        kill_tree(proc)
        os.close(controller)
        os.close(terminal)


def test_top_piped_prints_one_snapshot(metered: Metered) -> None:
    proc = cli("top", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "cam1" in proc.stdout and "cam2" in proc.stdout and "\x1b" not in proc.stdout


def test_unusable_metrics_address_is_exit_2_in_one_line(tmp_home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args, env in (
            (["--metrics-addr", f"127.0.0.1:{port}"], {}),
            (["--metrics-addr", "not-an-address"], {}),
            ([], {"STREAMALCHEMY_METRICS_ADDR": "127.0.0.1:99999"}),
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "streamalchemy", "daemon", "run", *args],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
            )
            assert proc.returncode == 2, (args, env, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert "metrics" in proc.stderr.lower() or "METRICS" in proc.stderr
    assert not (tmp_home / "streamalchemy.sock").exists()


def test_hls_output_bytes_are_counted_from_its_segments(metered: Metered) -> None:
    started = cli(
        "start", "hls1", "--testsrc", "--resolution", "480", "--fps", "5", "--output", "hls"
    )
    assert started.returncode == 0, started.stderr
    try:
        wait_for(
            lambda: (
                metered.samples().get(("streamalchemy_stream_output_bytes_total", "hls1"), 0) > 0
            ),
            30,
            "bytes of hls1's segments",
            interval=0.5,
        )
    finally:
        assert cli("stop", "hls1").returncode == 0
