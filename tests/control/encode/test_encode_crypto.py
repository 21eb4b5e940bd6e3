"""Encrypted titles: CENC decodes only with the key, HLS AES-128 plays through a key endpoint,
and the key never lands in the origin store."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from pathlib import Path

import av
import m3u8
import pytest
from aiohttp import web
from mpegdash.parser import MPEGDASHParser

from control.encode.clearkey import license_response
from control.encode.crypto import aes128_decrypt, key_path, read_key
from control.encode.fileset import FileSetManifest
from control.encode.pipeline import ingest
from control.encode.spec import IngestSpec
from control.encode.synth import make_master


@pytest.fixture(scope="module")
def small_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_master(tmp_path_factory.mktemp("cm") / "m.mp4", seconds=2, width=320, height=180)


@pytest.fixture(scope="module")
def cenc_title(tmp_path_factory: pytest.TempPathFactory, small_master: Path) -> tuple[Path, Path, FileSetManifest]:
    origin, keys = tmp_path_factory.mktemp("corigin"), tmp_path_factory.mktemp("ckeys")
    spec = IngestSpec(title_id="secret", name="Secret", ladder="fixed", segment_seconds=1.0, encrypt="cenc",
                      workers=2, artwork_candidates=0)
    return origin / "secret", keys, ingest(small_master, origin, keys, spec)


def _decode(data: Path, key: str | None) -> int:
    options = {"decryption_key": key} if key else {}
    with av.open(str(data), options=options) as container:
        return sum(1 for _ in container.decode(video=0))


def test_encode_cenc_decodes_with_key_only(cenc_title: tuple[Path, Path, FileSetManifest], tmp_path: Path) -> None:
    root, keys, manifest = cenc_title
    key = read_key(keys, "secret")
    assert manifest.encryption == {"scheme": "cenc", "kid": key.kid}
    video = next(r["id"] for r in manifest.renditions if r["kind"] == "video")
    for seg_name in ("seg_00001.m4s", "seg_00002.m4s"):
        joined = tmp_path / f"{seg_name}.mp4"
        joined.write_bytes((root / video / "init.mp4").read_bytes() + (root / video / seg_name).read_bytes())
        assert _decode(joined, key.key) == 24
        with pytest.raises(av.error.FFmpegError):
            _decode(joined, None)
        with pytest.raises(av.error.FFmpegError):
            _decode(joined, "00" * 16)


def test_encode_cenc_key_stays_out_of_origin(cenc_title: tuple[Path, Path, FileSetManifest]) -> None:
    root, keys, manifest = cenc_title
    key = read_key(keys, "secret")
    path = key_path(keys, "secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw, text = bytes.fromhex(key.key), key.key.encode()
    for f in manifest.files:
        data = (root / f.path).read_bytes()
        assert raw not in data and text not in data, f.path
    assert key.key not in repr(key)


def test_encode_cenc_hls_announces_sample_aes_ctr(cenc_title: tuple[Path, Path, FileSetManifest]) -> None:
    root, _, manifest = cenc_title
    master = m3u8.load(str(root / "master.m3u8"))
    uris = [p.uri for p in master.playlists] + [m.uri for m in master.media] + [p.uri for p in master.iframe_playlists]
    assert len(uris) == 3
    for uri in uris:
        media = m3u8.load(str(root / uri))
        assert [k.method for k in media.keys if k] == ["SAMPLE-AES-CTR"], uri
        assert media.keys[-1].uri == "/v1/license/clearkey/secret"


def test_encode_cenc_mpd_announces_clearkey(cenc_title: tuple[Path, Path, FileSetManifest]) -> None:
    root, keys, _ = cenc_title
    key = read_key(keys, "secret")
    mpd = MPEGDASHParser.parse(str(root / "manifest.mpd"))
    for aset in mpd.periods[0].adaptation_sets:
        schemes = {cp.scheme_id_uri: cp for cp in aset.content_protections}
        assert "urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e" in schemes
        assert schemes["urn:mpeg:dash:mp4protection:2011"].value == "cenc"
        assert schemes["urn:mpeg:dash:mp4protection:2011"].cenc_default_kid == key.kid_uuid
        common = schemes["urn:uuid:1077efec-c0b2-4d02-ace3-3c1e52e2fb4b"]
        assert common.pssh and bytes.fromhex(key.kid) in base64.b64decode(common.pssh[0].pssh)


async def test_encode_aes128_plays_over_http_with_key_endpoint(
    tmp_path: Path, small_master: Path, serve, probe_url
) -> None:
    origin, keys = tmp_path / "origin", tmp_path / "keys"
    origin.mkdir()
    fetched: list[str] = []

    async def key_handler(request: web.Request) -> web.Response:
        fetched.append(request.match_info["title"])
        return web.Response(body=bytes.fromhex(read_key(keys, request.match_info["title"]).key))

    base = await serve(origin, [web.get("/keys/{title}", key_handler)])
    spec = IngestSpec(title_id="locked", name="Locked", ladder="fixed", segment_seconds=1.0, encrypt="aes128",
                      workers=2, artwork_candidates=0, aes128_key_uri=base + "/keys/{title_id}")
    manifest = await asyncio.to_thread(ingest, small_master, origin, keys, spec)
    assert manifest.dash is None and manifest.encryption is not None
    root = origin / "locked"
    video = next(r["id"] for r in manifest.renditions if r["kind"] == "video")
    segment = (root / video / "seg_00002.m4s").read_bytes()
    assert segment[4:8] != b"moof"  # ciphertext, not an fMP4 fragment
    clear = aes128_decrypt(segment, bytes.fromhex(read_key(keys, "locked").key), 2)
    assert clear[4:8] == b"moof"
    frames = (await probe_url(f"{base}/locked/{video}/playlist.m3u8", "-show_entries", "frame=key_frame"))["frames"]
    assert len(frames) == 48
    assert fetched and set(fetched) == {"locked"}


def test_encode_cenc_plays_with_the_key_a_clearkey_license_returns(
    cenc_title: tuple[Path, Path, FileSetManifest], tmp_path: Path
) -> None:
    """The player's path: KID from the MPD, license request, key from the answer, decode."""
    root, keys, manifest = cenc_title
    mpd = MPEGDASHParser.parse(str(root / "manifest.mpd"))
    cp = next(c for c in mpd.periods[0].adaptation_sets[0].content_protections if c.cenc_default_kid)
    kid = bytes.fromhex(cp.cenc_default_kid.replace("-", ""))
    request = json.dumps({"kids": [base64.urlsafe_b64encode(kid).rstrip(b"=").decode()], "type": "temporary"})
    answer = license_response(request.encode(), read_key(keys, "secret"))
    key_hex = base64.urlsafe_b64decode(answer["keys"][0]["k"] + "==").hex()
    video = next(r["id"] for r in manifest.renditions if r["kind"] == "video")
    joined = tmp_path / "first.mp4"
    joined.write_bytes((root / video / "init.mp4").read_bytes() + (root / video / "seg_00001.m4s").read_bytes())
    assert _decode(joined, key_hex) == 24
