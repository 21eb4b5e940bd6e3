"""The file-set manifest parses strictly; publication is all-or-nothing."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import pytest

from control.encode.errors import BadManifest, TitleExists
from control.encode.fileset import FileSetManifest, new_staging, publish, sweep_staging


def _sample() -> dict[str, Any]:
    return {
        "schema": "nearcast.fileset/1", "title_id": "t1", "name": "T", "version": 1,
        "created": "2026-01-01T00:00:00+00:00", "duration": 4.0, "genres": ["drama"], "hls": "master.m3u8",
        "dash": "manifest.mpd", "encryption": None, "renditions": [{"id": "h264_360p_365k"}],
        "ladder": {"mode": "fixed", "points": []}, "source": {},
        "files": [{"path": "master.m3u8", "size": 10, "sha256": "a" * 64, "rendition": None, "kind": "manifest"}],
    }


def test_encode_manifest_round_trips() -> None:
    m = FileSetManifest.from_dict(_sample())
    assert FileSetManifest.from_dict(m.to_dict()) == m
    assert m.total_bytes == 10


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(extra=1),
        lambda d: d.pop("files"),
        lambda d: d.update(schema="nearcast.fileset/9"),
        lambda d: d.update(version="1"),
        lambda d: d.update(version=True),
        lambda d: d.update(duration=-1),
        lambda d: d.update(genres=[1]),
        lambda d: d.update(encryption={"scheme": "cenc", "kid": "x", "key": "y"}),
        lambda d: d["files"][0].update(path="../../etc/passwd"),
        lambda d: d["files"][0].update(path="/abs"),
        lambda d: d["files"][0].update(sha256="Z" * 64),
        lambda d: d["files"][0].update(kind="executable"),
        lambda d: d["files"][0].update(size=-5),
        lambda d: d["files"].append(dict(d["files"][0])),
        lambda d: d.update(files="nope"),
    ],
)
def test_encode_manifest_rejects_malformed(mutate: Any) -> None:
    raw = copy.deepcopy(_sample())
    mutate(raw)
    with pytest.raises(BadManifest):
        FileSetManifest.from_dict(raw)


def test_encode_manifest_rejects_non_objects() -> None:
    for raw in (None, [], "x", 3):
        with pytest.raises(BadManifest):
            FileSetManifest.from_dict(raw)


def test_encode_publish_is_one_rename_and_never_replaces(tmp_path: Path) -> None:
    staging = new_staging(tmp_path, "t1")
    (staging / "a.txt").write_text("a")
    final = publish(staging, tmp_path, "t1")
    assert (final / "a.txt").read_text() == "a" and not staging.exists()
    again = new_staging(tmp_path, "t1")
    with pytest.raises(TitleExists):
        publish(again, tmp_path, "t1")
    assert again.exists()


def test_encode_sweep_removes_only_stale_staging(tmp_path: Path) -> None:
    old, fresh = new_staging(tmp_path, "a"), new_staging(tmp_path, "b")
    (tmp_path / "title").mkdir()
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert sweep_staging(tmp_path) == [old]
    assert fresh.exists() and (tmp_path / "title").exists()
