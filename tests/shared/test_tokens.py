from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import tokens
from shared.errors import ConfigError, TokenError
from shared.tokens import TokenKeys

NOW = 1_800_000_000.0
KEYS = TokenKeys({"k1": b"k" * 32, "k2": b"q" * 32}, "k1")


def _tok(**kw: object) -> str:
    args: dict[str, object] = {"path_prefix": "title-1/", "client_prefix": "127.0.1.0/24", "ttl_s": 3600, "now": NOW}
    args.update(kw)
    return tokens.sign(KEYS, **args)  # type: ignore[arg-type]


def _verify(token: str, path: str = "title-1/hls/master.m3u8", ip: str = "127.0.1.9", now: float = NOW,
            keys: TokenKeys = KEYS, leeway: float = 30) -> tokens.Grant:
    return tokens.verify(keys, token, path=path, client_ip=ip, now=now, leeway_s=leeway)


def test_valid_token_grants_its_scope() -> None:
    grant = _verify(_tok(fallbacks=("http://127.0.0.1:9/",)))
    assert grant.path_prefix == "title-1/" and grant.client_prefix == "127.0.1.0/24"
    assert grant.fallbacks == ("http://127.0.0.1:9/",)
    assert "/" not in _tok()


def test_flipped_bits_fail_everywhere() -> None:
    token = _tok()
    for i in range(len(token)):
        for flip in (1, 2, 32):
            ch = chr(ord(token[i]) ^ flip)
            mutated = token[:i] + ch + token[i + 1:]
            if mutated == token:
                continue
            with pytest.raises(TokenError):
                _verify(mutated)


def test_expired_token_fails_beyond_leeway_only() -> None:
    token = _tok(ttl_s=60)
    _verify(token, now=NOW + 60 + 29)  # within clock-skew leeway
    with pytest.raises(TokenError, match="expired"):
        _verify(token, now=NOW + 60 + 31)


def test_other_title_or_prefix_fails() -> None:
    token = _tok()
    for path in ("title-2/master.m3u8", "title-10/x", "title-1", "title-1/../title-2/x", "title-1/./x",
                 "title-1//x", "title-1/a\\..\\b", "title-1/a\x00"):
        with pytest.raises(TokenError):
            _verify(token, path=path)
    exact = _tok(path_prefix="title-1")
    _verify(exact, path="title-1/x")
    with pytest.raises(TokenError):
        _verify(exact, path="title-10/x")


def test_other_client_prefix_fails() -> None:
    token = _tok()
    for ip in ("127.0.2.9", "10.0.0.1", "::1", "not-an-ip", ""):
        with pytest.raises(TokenError):
            _verify(token, ip=ip)
    _verify(token, ip="::ffff:127.0.1.7")  # IPv4-mapped IPv6 from a dual-stack socket


def test_ipv6_and_wildcard_prefixes() -> None:
    _verify(_tok(client_prefix="2001:db8::/32"), ip="2001:db8::1")
    with pytest.raises(TokenError):
        _verify(_tok(client_prefix="2001:db8::/32"), ip="2001:db9::1")
    _verify(_tok(client_prefix="*"), ip="192.0.2.1")


def test_key_rotation() -> None:
    old = _tok()
    rotated = KEYS.rotated("k3")
    new = tokens.sign(rotated, path_prefix="title-1/", client_prefix="*", ttl_s=60, now=NOW)
    assert new.split(".")[1] == "k3"
    _verify(new, keys=rotated)
    _verify(old, keys=rotated)  # k1 kept for tokens still in flight
    stale = rotated.rotated("k4").rotated("k5")
    with pytest.raises(TokenError, match="unknown key"):
        _verify(old, keys=stale)


def test_key_file_round_trip_and_errors(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "keys.json"
    KEYS.save(p)
    assert oct(p.stat().st_mode & 0o777) == "0o600"
    assert TokenKeys.load(p) == KEYS
    p.write_text("{nope")
    with pytest.raises(ConfigError, match="keys.json"):
        TokenKeys.load(p)
    with pytest.raises(ConfigError, match="shorter"):
        TokenKeys({"k": b"short"}, "k")


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=300), st.text(max_size=60), st.text(max_size=40))
def test_random_tokens_only_raise_token_error(token: str, path: str, ip: str) -> None:
    try:
        tokens.verify(KEYS, token, path=path, client_ip=ip, now=NOW)
    except TokenError:
        pass


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 500), st.text(alphabet="ABCabc019_-.=/+", min_size=1, max_size=8))
def test_spliced_tokens_only_raise_token_error(pos: int, junk: str) -> None:
    token = _tok()
    pos %= len(token)
    mutated = token[:pos] + junk + token[pos + len(junk):]
    if mutated == token:
        return
    with pytest.raises(TokenError):
        _verify(mutated)
