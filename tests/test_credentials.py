"""The one masking function, and ${NAME} references resolved from files or the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamalchemy.core import spec
from streamalchemy.core.masking import (
    has_secret,
    is_secret_param,
    mask_argv,
    mask_credentials,
    mask_document,
)
from streamalchemy.server.references import (
    CredentialError,
    lookup,
    references,
    resolve,
    unresolved,
)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("rtsp://camuser:S3cretPass@h/x", "rtsp://***:***@h/x"),
        ("rtsp://h/x?token=T0kenSecret", "rtsp://h/x?token=***"),
        ("http://h/x?a=1&TOKEN=t&b=2", "http://h/x?a=1&TOKEN=***&b=2"),
        (
            "http://h/x?access_token=t&api_key=k&apikey=k2",
            "http://h/x?access_token=***&api_key=***&apikey=***",
        ),
        (
            "http://h/x?X-Amz-Signature=abc&sig=s&auth=a",
            "http://h/x?X-Amz-Signature=***&sig=***&auth=***",
        ),
        (
            "srt://h:9000?passphrase=verysecret1&latency=200",
            "srt://h:9000?passphrase=***&latency=200",
        ),
        ("http://h/x?password=p&secret=s#frag", "http://h/x?password=***&secret=***#frag"),
        ("http://h/x?keyint=60&monkeys=3", "http://h/x?keyint=60&monkeys=3"),
        ("rtmp://pubuser:PubPass@h/live/streamKEY123", "rtmp://***:***@h/live/***"),
        ("rtmps://h:443/app/sk_live_abc?x=1", "rtmps://h:443/app/***?x=1"),
        ("rtmp://h/live", "rtmp://h/live"),
        ("rtmp://h/live/", "rtmp://h/live/"),
        ("rtsp://h/live/cam1", "rtsp://h/live/cam1"),
        ("rtsp://${CAM_USER}:${CAM_PASS}@h/x", "rtsp://${CAM_USER}:${CAM_PASS}@h/x"),
        ("rtsp://${CAM_USER}:literal@h/x", "rtsp://${CAM_USER}:***@h/x"),
        ("rtmp://h/live/${KEY}?token=${T}", "rtmp://h/live/${KEY}?token=${T}"),
        (
            "[tcp @ 0x55] Connection to tcp://u:p@h:554?timeout=0&token=zz failed",
            "[tcp @ 0x55] Connection to tcp://***:***@h:554?timeout=0&token=*** failed",
        ),
        (
            "'rtmp://h/live/k1' and 'rtmp://h/live/k2'",
            "'rtmp://h/live/***' and 'rtmp://h/live/***'",
        ),
        ("no url: token=abc user@example.com", "no url: token=abc user@example.com"),
    ],
)
def test_mask_credentials_hides_userinfo_secret_params_and_stream_keys(
    text: str, masked: str
) -> None:
    assert mask_credentials(text) == masked
    assert mask_credentials(masked) == masked  # masking twice changes nothing


def test_spec_reexports_the_one_function() -> None:
    assert spec.mask_credentials is mask_credentials


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "Key",
        "PASSWORD",
        "client_secret",
        "auth",
        "sig",
        "signature",
        "streamKey",
        "Authorization",
    ],
)
def test_secret_param_names(name: str) -> None:
    assert is_secret_param(name)


@pytest.mark.parametrize("name", ["latency", "mode", "keyint", "rtsp_transport", "streamid", "t"])
def test_plain_param_names(name: str) -> None:
    assert not is_secret_param(name)


def test_mask_document_masks_every_string_keeps_structure() -> None:
    doc = {
        "success": True,
        "streams": {
            "cam": {
                "config": {"source_url": "rtsp://u:p@h/x", "output": "rtmp://h/live/KEY"},
                "saved_at": 1.5,
            }
        },
        "lines": ["from 'http://h/?token=abc'", None, 3],
    }
    assert mask_document(doc) == {
        "success": True,
        "streams": {
            "cam": {
                "config": {"source_url": "rtsp://***:***@h/x", "output": "rtmp://h/live/***"},
                "saved_at": 1.5,
            }
        },
        "lines": ["from 'http://h/?token=***'", None, 3],
    }
    assert mask_argv(["ffmpeg", "-i", "rtsp://u:p@h/x"]) == ["ffmpeg", "-i", "rtsp://***:***@h/x"]


def test_has_secret() -> None:
    assert has_secret("rtsp://u:p@h/x")
    assert has_secret("rtsp://h/x?token=1")
    assert has_secret("rtsp://${U}@h/x")
    assert not has_secret("rtsp://h/x")
    assert not has_secret("udp://127.0.0.1:5000/[/]x")


def test_references_in_order_once() -> None:
    assert references("rtsp://${A}:${B}@h/${A}") == ["A", "B"]
    assert references("rtsp://h/$HOME/${1X}") == []


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_lookup_order_systemd_then_config_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "config"
    systemd = tmp_path / "creds"
    env = {"CREDENTIALS_DIRECTORY": str(systemd), "PASS": "from-env"}
    assert lookup("PASS", config, env) == "from-env"
    _private(config / "credentials" / "PASS", "from-file\n")
    assert lookup("PASS", config, env) == "from-file"
    _private(systemd / "PASS", "from-systemd\n", 0o400)
    assert lookup("PASS", config, env) == "from-systemd"


def test_lookup_refuses_a_credential_file_others_can_read(tmp_path: Path) -> None:
    path = _private(tmp_path / "credentials" / "PASS", "x", 0o644)
    with pytest.raises(CredentialError) as err:
        lookup("PASS", tmp_path, {"PASS": "env"})
    assert f"chmod 600 {path}" in str(err.value)
    assert err.value.exit_code == 2


def test_resolve_replaces_references_and_names_a_missing_one(tmp_path: Path) -> None:
    env = {"U": "camuser", "P": "S3cret"}
    assert resolve("rtsp://${U}:${P}@h/x", tmp_path, env) == "rtsp://camuser:S3cret@h/x"
    assert resolve("rtsp://h/x", tmp_path, {}) == "rtsp://h/x"
    with pytest.raises(CredentialError, match=r"\$\{NOPE\} not found"):
        resolve("rtsp://${U}:${NOPE}@h/x", tmp_path, env)
    assert "${NOPE}" in (unresolved(["rtsp://h/x", "rtsp://${NOPE}@h"], tmp_path, env) or "")
    assert unresolved(["rtsp://${U}@h"], tmp_path, env) is None
    with pytest.raises(CredentialError, match="control characters"):
        resolve("rtsp://${BAD}@h", tmp_path, {"BAD": "a\x1bb"})


def test_restore_plan_skips_a_stream_whose_reference_is_missing(tmp_path: Path) -> None:
    from streamalchemy.core.restore import plan
    from streamalchemy.server.references import unresolved as missing_in

    entry = {
        "config": {"stream_type": "rtsp", "source_url": "rtsp://u:${CAM_PASS}@h/x"},
        "saved_at": 1.0,
    }
    steps = plan(
        {"cam": entry},
        running=set(),
        choose_encoder=lambda spec: "libx264",
        now=2.0,
        credentials_missing=lambda spec: missing_in([spec.source, spec.output], tmp_path, {}),
    )
    (step,) = steps
    assert step.result == "skipped" and "${CAM_PASS}" in step.reason


def test_input_socket_serves_the_script_to_each_connection_then_goes(tmp_path: Path) -> None:
    import asyncio
    import socket

    from streamalchemy.server.inputsockets import InputSockets

    async def main() -> None:
        inputs = InputSockets(tmp_path / "in")
        path = inputs.open("cam", "ffconcat version 1.0\nfile 'rtsp://u:p@h/x'\n")
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(tmp_path / "in").st_mode & 0o777 == 0o700
        loop = asyncio.get_running_loop()
        for _ in range(2):  # every FFmpeg start, restarts included
            with socket.socket(socket.AF_UNIX) as s:
                s.setblocking(False)
                await loop.sock_connect(s, path)
                data = b""
                while chunk := await loop.sock_recv(s, 4096):
                    data += chunk
            assert b"rtsp://u:p@h/x" in data
        inputs.close("cam")
        assert not os.path.exists(path)

    asyncio.run(main())
