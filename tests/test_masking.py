"""The secrets model (each URL parsed once into values) and the linear masking pass."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamalchemy.core.masking import (
    MASK,
    Secrets,
    has_secret,
    mask_argv,
    mask_credentials,
    mask_document,
    secrets_in_url,
)
from streamalchemy.errors import InvalidInput
from streamalchemy.supervision.ffmpeg import build_argv


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("rtsp://cam:Kq'7Zt9w@h/x", "Kq'7Zt9w"),
        ("rtsp://cam:two words@h/x", "two words"),
        ('rtsp://cam:say"hi"x@h/x', 'say"hi"x'),
        ("rtsp://cam:a<b>c!d@h/x", "a<b>c!d"),
        ("srt://h:8890?streamid=read:cam1:viewer:Srt9Pass&latency=200", "Srt9Pass"),
        ("http://h/x.ts?%74oken=Pct3ncoded", "Pct3ncoded"),
        ("http://h/x.ts#token=Fr4gment", "Fr4gment"),
        ("http://h/live;token=P4thParam/x.ts", "P4thParam"),
        ("http://h/x.ts?pw=Shortpw1", "Shortpw1"),
        ("https://h/x.m3u8?hdnts=exp=1700000000~acl=/*~hmac=0a1b2c3d4e5f", "0a1b2c3d4e5f"),
        ("rtmp://h/live/StreamKey123", "StreamKey123"),
        (
            "http://h/x?t=eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4f",
            "SflKxwRJSMeKKF2QT4f",
        ),
    ],
)
def test_the_model_finds_the_secret_and_every_edge_hides_it(url: str, secret: str) -> None:
    found = secrets_in_url(url)
    assert any(secret in value for value in found)
    assert has_secret(url)
    doc = mask_document({"source": url, "reason": f"cannot open '{url}': 401", "n": 3})
    assert secret not in repr(doc)
    assert doc["n"] == 3
    assert secret not in mask_credentials(f"x {url} y", Secrets(found))


def test_a_plain_url_has_no_secret_and_is_left_alone() -> None:
    for url in ("rtsp://h:8554/cam?latency=200", "srt://h:9000?mode=caller", "http://h/a.ts"):
        assert not secrets_in_url(url)
        assert mask_document({"source": url}) == {"source": url}


def test_a_reference_is_kept_with_its_user_name() -> None:
    url = "rtsp://admin:${CAM_PW}@h/x?token=${TOKEN}"
    assert mask_credentials(url) == url
    assert secrets_in_url(url) == set()
    assert has_secret(url)


def test_userinfo_keeps_its_shape_whatever_the_password_holds() -> None:
    url = "rtsp://cam:Kq'7Zt9w@h/x"
    assert mask_document({"source": url})["source"] == "rtsp://***:***@h/x"


def test_known_values_are_hidden_in_text_that_is_no_url() -> None:
    secrets = Secrets(["a value with space"])
    line = "Impossible to open 'http://h/a value with space/x.ts'"
    assert "a value with space" not in mask_credentials(line, secrets)
    # too short to hide everywhere: hidden only where a URL holds it
    assert mask_credentials("pid 123", Secrets(["123"])) == "pid 123"


def test_masked_value_is_what_a_masked_export_carries() -> None:
    assert MASK in secrets_in_url(mask_credentials("rtsp://u:Secret99@h/x"))


ADVERSARIAL = [
    "a" * 64,  # a long run of scheme characters, no ://
    "a://" * 16,
    "?a" * 32,
    "x://h/?" + "a=&" * 20,
    "http://" + "u:" * 30 + "@",
]


def _per_char(text: str) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        mask_credentials(text)
        best = min(best, time.perf_counter() - began)
    return best / len(text)


@pytest.mark.parametrize("unit", ADVERSARIAL)
def test_masking_is_linear(unit: str) -> None:
    small = (unit * (1024 // len(unit) + 1))[:1024]
    large = (unit * ((1 << 20) // len(unit) + 1))[: 1 << 20]
    # per character, 1 MiB may cost a few times 1 KiB (caches); a quadratic pass costs 1000x
    assert _per_char(large) / _per_char(small) < 20


_PART = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
)
_SECRET = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="@/?#&;="),
    min_size=6,
    max_size=24,
).filter(lambda s: "${" not in s and "://" not in s)


@st.composite
def _urls(draw: st.DrawFn) -> tuple[str, str]:
    secret = draw(_SECRET)
    user = quote(draw(_PART), safe="")
    path = "/".join(quote(p, safe="") for p in draw(st.lists(_PART, max_size=3)))
    plain = [
        (quote(k, safe=""), quote(v, safe=""))
        for k, v in draw(st.lists(st.tuples(_PART, _PART), max_size=3))
    ]
    where = draw(st.sampled_from(["userinfo", "query", "fragment", "pathparam", "streamid"]))
    scheme = "srt" if where == "streamid" else draw(st.sampled_from(["rtsp", "http", "https"]))
    query = "&".join(f"q{k}={v}" for k, v in plain)
    netloc = "h.example:554"
    tail = f"/{path}"
    if where == "userinfo":
        netloc = f"{user}:{secret}@{netloc}"
    elif where == "query":
        query = f"{query}&token={secret}" if query else f"token={secret}"
    elif where == "pathparam":
        tail = f"/{path};password={secret}"
    elif where == "streamid":
        query = f"streamid=read:{path or 'cam'}:{user}:{secret}"
    url = f"{scheme}://{netloc}{tail}" + (f"?{query}" if query else "")
    if where == "fragment":
        url += f"#auth={secret}"
    return url, secret


@settings(max_examples=300, deadline=None)
@given(_urls())
@example(('srt://h.example:554/?streamid=read:cam:0:"00%00', '"00%00'))  # %00 as written
@example(("rtsp://u:protoc@h.example:554/x", "protoc"))  # a part of an option name
def test_a_known_secret_appears_in_no_output_log_line_or_argv(case: tuple[str, str]) -> None:
    from streamalchemy.core.spec import spec_from_request

    url, secret = case
    secrets = Secrets(secrets_in_url(url))
    outputs = [
        mask_document({"source": url, "lines": [f"[http] cannot open '{url}'", url]}),
        mask_credentials(f"[rtsp] method DESCRIBE failed for {url}: 401", secrets),
        mask_credentials(f"Impossible to open '{url}'", secrets),
        mask_argv(["ffmpeg", "-i", url]),
    ]
    assert secret not in repr(outputs)
    assert has_secret(url)
    try:
        spec = spec_from_request({"name": "cam", "url": url, "output": "hls"})
    except InvalidInput as exc:  # a host Python cannot parse: refused, secret hidden
        assert secret not in str(exc)
        return
    argv = build_argv(
        spec, ffmpeg="ffmpeg", encoder="libx264", target="/t/i.m3u8", input_socket="/s"
    )
    plain = spec_from_request({"name": "cam", "url": "rtsp://h/x", "output": "hls"})
    # What the hidden path always has (its option names and protocol list are no leak).
    fixed = build_argv(
        plain, ffmpeg="ffmpeg", encoder="libx264", target="/t/i.m3u8", input_socket="/s"
    )
    assert not any(secret in arg for arg in argv if arg not in fixed)
