"""Model bundles: a real XGBoost model round-trips, and every kind of bad bundle is refused cleanly."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
import zstandard

from shared import bundle
from shared.bundle import BundleError, BundleMetadata, Limits, TrainingWindow
from shared.errors import InvalidInput
from shared.messages import ModelDescriptor
from shared.signing import Signer


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def keys(signer: Signer) -> dict[str, bytes]:
    return {signer.key_id: signer.public_raw}


def make_source(root: Path, version: str = "v2", model_name: str = "model.ubj") -> Path:
    """A training output directory with a real (tiny) XGBoost ranker, feature spec, tables, metadata."""
    src = root / f"src-{version}"
    (src / "tables").mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] > 0).astype(int)
    dtrain = xgb.DMatrix(x, label=y, qid=np.repeat(np.arange(6), 10))
    model = xgb.train({"objective": "rank:ndcg", "max_depth": 2, "nthread": 1}, dtrain, num_boost_round=3)
    model.save_model(src / model_name)
    (src / "feature_spec.json").write_text(json.dumps({"features": ["demand", "cached", "hour", "device"]}))
    np.savez(src / "tables" / "neighbours.npz", ids=np.array(["t1", "t2"]), nbrs=np.array([[1, 0], [0, 1]]))
    meta = BundleMetadata(format=1, version=version, model=model_name,
                          training_window=TrainingWindow("2026-11-01", "2026-11-20"),
                          offline_metrics={"ndcg@10": 0.41, "map": 0.2}, tables=["tables/neighbours.npz"])
    (src / "metadata.json").write_bytes(meta.to_json())
    return src


def test_round_trip_with_a_real_model(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    src = make_source(tmp_path)
    desc = bundle.build(src, tmp_path / "out", signer, "http://127.0.0.1:9/models/")
    assert desc.url == "http://127.0.0.1:9/models/v2.ncb" and desc.key_id == signer.key_id
    opened = bundle.open_bundle(tmp_path / "out" / "v2.ncb", desc, keys, tmp_path / "models" / "v2")
    assert opened.metadata.version == "v2" and opened.metadata.offline_metrics["ndcg@10"] == 0.41
    assert opened.feature_spec()["features"][0] == "demand"
    table = opened.table("tables/neighbours.npz")
    assert table["ids"].tolist() == ["t1", "t2"]
    booster = xgb.Booster()
    booster.load_model(opened.model_path)
    x = np.random.default_rng(1).normal(size=(5, 4))
    original = xgb.Booster()
    original.load_model(src / "model.ubj")
    np.testing.assert_array_equal(booster.predict(xgb.DMatrix(x)), original.predict(xgb.DMatrix(x)))
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.endswith(".staging")]
    with pytest.raises(BundleError, match="no table"):
        opened.table("nope.npz")


def test_build_is_deterministic(tmp_path: Path, signer: Signer) -> None:
    src = make_source(tmp_path)
    a = bundle.build(src, tmp_path / "a", signer, "http://x")
    (src / "feature_spec.json").touch()  # a new mtime must not change the bytes
    b = bundle.build(src, tmp_path / "b", signer, "http://x")
    assert a.sha256 == b.sha256 and a.size == b.size
    assert (tmp_path / "a" / "v2.ncb").read_bytes() == (tmp_path / "b" / "v2.ncb").read_bytes()


def test_json_model_is_accepted(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    src = make_source(tmp_path, "v3", "model.json")
    desc = bundle.build(src, tmp_path / "out", signer, "http://x")
    opened = bundle.open_bundle(tmp_path / "out" / "v3.ncb", desc, keys, tmp_path / "m")
    assert opened.model_path.name == "model.json"
    json.loads(opened.model_path.read_text())


def test_recommender_layout_with_named_model_and_spec(tmp_path: Path, signer: Signer,
                                                     keys: dict[str, bytes]) -> None:
    """control/recs saves ranker.ubj, pipeline.json and generators/*.npz: metadata names them."""
    src = make_source(tmp_path, "v4")
    (src / "model.ubj").rename(src / "ranker.ubj")
    (src / "feature_spec.json").rename(src / "pipeline.json")
    (src / "generators").mkdir()
    np.savez(src / "generators" / "als.npz", factors=np.ones((3, 2)))
    meta = BundleMetadata(1, "v4", "ranker.ubj", TrainingWindow("a", "b"), feature_spec="pipeline.json")
    (src / "metadata.json").write_bytes(meta.to_json())
    desc = bundle.build(src, tmp_path / "out", signer, "http://x")
    opened = bundle.open_bundle(tmp_path / "out" / "v4.ncb", desc, keys, tmp_path / "m")
    assert opened.model_path.name == "ranker.ubj" and opened.feature_spec()["features"][0] == "demand"
    assert (opened.path / "generators" / "als.npz").is_file() and (opened.path / "tables").is_dir()


def built(tmp_path: Path, signer: Signer) -> tuple[Path, ModelDescriptor]:
    desc = bundle.build(make_source(tmp_path), tmp_path / "out", signer, "http://x")
    return tmp_path / "out" / "v2.ncb", desc


def assert_refused(path: Path, desc: ModelDescriptor, keys: dict[str, bytes], dest: Path,
                   match: str, limits: Limits | None = None) -> None:
    with pytest.raises(BundleError, match=match) as info:
        bundle.open_bundle(path, desc, keys, dest, limits or Limits())
    assert isinstance(info.value, InvalidInput)
    assert not dest.exists()
    if dest.parent.exists():
        assert list(dest.parent.iterdir()) == [], "a refused bundle left files behind"


def test_tampered_byte_is_refused(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    path, desc = built(tmp_path, signer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert_refused(path, desc, keys, tmp_path / "m" / "v2", "sha256")


def test_tampered_descriptor_is_refused(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    """The attacker controls the file and recomputes the hash: the signature still binds it."""
    path, desc = built(tmp_path, signer)
    original = path.read_bytes()
    data = bytearray(original)
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    forged = dataclasses.replace(desc, sha256=hashlib.sha256(data).hexdigest())
    assert_refused(path, forged, keys, tmp_path / "m" / "v2", "signature does not verify")
    path.write_bytes(original)
    renamed = dataclasses.replace(desc, version="v9")  # a genuine bundle replayed as another version
    assert_refused(tmp_path / "out" / "v2.ncb", renamed, keys, tmp_path / "m" / "v9", "signature")


def test_wrong_key_and_unknown_key_are_refused(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    path, desc = built(tmp_path, signer)
    other = Signer.generate()
    evil = bundle.build(make_source(tmp_path / "e"), tmp_path / "evil", other, "http://x")
    assert_refused(tmp_path / "evil" / "v2.ncb", evil, keys, tmp_path / "m" / "v2", "unknown signing key")
    # Claiming our key id with a signature made by another key.
    assert_refused(tmp_path / "evil" / "v2.ncb", dataclasses.replace(evil, key_id=signer.key_id), keys,
                   tmp_path / "m" / "v2", "does not verify")
    assert_refused(path, dataclasses.replace(desc, signature="%%%"), keys, tmp_path / "m" / "v2", "not base64")


def test_truncated_and_oversized_are_refused(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    path, desc = built(tmp_path, signer)
    full = path.read_bytes()
    path.write_bytes(full[:-100])
    assert_refused(path, desc, keys, tmp_path / "m" / "v2", "bytes; the descriptor says")
    path.write_bytes(full)
    assert_refused(path, desc, keys, tmp_path / "m" / "v2", "outside",
                   Limits(max_compressed=desc.size - 1))
    # Truncated inside a validly signed file (a signer bug): the decompressor notices.
    tar_bytes = bundle.pack(make_source(tmp_path / "t"))[1]
    blob, sealed = bundle.seal(tar_bytes[:3000], "v2", signer, "http://x")
    path.write_bytes(blob)
    assert_refused(path, sealed, keys, tmp_path / "m" / "v2", "truncated|archive|missing")
    cut = zstandard.ZstdCompressor().compress(tar_bytes)[:-200]  # a zstd frame cut short, then signed
    digest = hashlib.sha256(cut).hexdigest()
    sig = base64.b64encode(signer.sign(bundle.statement("v2", len(cut), digest))).decode()
    cut_desc = dataclasses.replace(sealed, size=len(cut), sha256=digest, signature=sig)
    path.write_bytes(cut)
    assert_refused(path, cut_desc, keys, tmp_path / "m" / "v2", "truncated|archive|decompress")


def hostile(tmp_path: Path, signer: Signer, members: list[tuple[tarfile.TarInfo, bytes]],
            with_valid: bool = True) -> tuple[Path, ModelDescriptor]:
    """A validly signed bundle holding hand-made tar members: a compromised or buggy signer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if with_valid:
            src = make_source(Path(tempfile.mkdtemp(dir=tmp_path)))
            for rel in ("metadata.json", "feature_spec.json", "model.ubj", "tables/neighbours.npz"):
                tar.add(src / rel, arcname=rel)
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    blob, desc = bundle.seal(buf.getvalue(), "v2", signer, "http://x")
    path = tmp_path / "hostile.ncb"
    path.write_bytes(blob)
    return path, desc


def member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[
        tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data) if kind == tarfile.REGTYPE else 0, link
    return info, data


@pytest.mark.parametrize(("entry", "match"), [
    (member("/etc/passwd"), "plain relative"),
    (member("../escape"), "plain relative"),
    (member("tables/../../escape"), "plain relative"),
    (member("a//b"), "plain relative"),
    (member("evil", kind=tarfile.SYMTYPE, link="/etc/passwd"), "not a regular file"),
    (member("evil", kind=tarfile.LNKTYPE, link="metadata.json"), "not a regular file"),
    (member("dev", kind=tarfile.CHRTYPE), "not a regular file"),
    (member("fifo", kind=tarfile.FIFOTYPE), "not a regular file"),
    (member("tables", kind=tarfile.DIRTYPE), "not a regular file"),
    (member("metadata.json", b"{}"), "twice"),
    (member("model.ubj/inner"), "clashes"),
    (member("name\nwith-newline"), "plain relative"),
])
def test_hostile_members_are_refused(tmp_path: Path, signer: Signer, keys: dict[str, bytes],
                                     entry: tuple[tarfile.TarInfo, bytes], match: str) -> None:
    path, desc = hostile(tmp_path, signer, [entry])
    assert_refused(path, desc, keys, tmp_path / "m" / "v2", match)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "m" / "escape").exists()


def test_member_count_and_sizes_are_bounded(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    path, desc = hostile(tmp_path, signer, [member(f"extra{i}") for i in range(20)])
    assert_refused(path, desc, keys, tmp_path / "m" / "v2", "more than 10 members", Limits(max_members=10))
    path, desc = hostile(tmp_path, signer, [member("big", b"a" * 5000)])
    assert_refused(path, desc, keys, tmp_path / "m" / "v2", "member 'big' is 5000 bytes", Limits(max_member=4096))


def test_huge_extended_headers_are_refused_before_reading(tmp_path: Path, signer: Signer,
                                                          keys: dict[str, bytes]) -> None:
    info, data = member("fine")
    info.pax_headers = {"comment": "x" * (1 << 20)}
    path, desc = hostile(tmp_path, signer, [(info, data)])
    assert_refused(path, desc, keys, tmp_path / "m" / "v2", "extended tar header")


def test_zip_bomb_stops_at_the_bound(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    path, desc = hostile(tmp_path, signer, [member("zeros", bytes(64 << 20))], with_valid=False)
    assert desc.size < 64 << 10, "the bomb compresses well"
    assert_refused(path, desc, keys, tmp_path / "m" / "v2", "more than", Limits(max_unpacked=1 << 20))


def test_bad_metadata_is_refused(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    def with_meta(raw: bytes) -> tuple[Path, ModelDescriptor]:
        info, _ = member("metadata.json", raw)
        src = make_source(tmp_path / "b", "v2")
        (src / "metadata.json").unlink()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(info, io.BytesIO(raw))
            for rel in ("feature_spec.json", "model.ubj", "tables/neighbours.npz"):
                tar.add(src / rel, arcname=rel)
        blob, desc = bundle.seal(buf.getvalue(), "v2", signer, "http://x")
        (tmp_path / "b" / "x.ncb").write_bytes(blob)
        shutil.rmtree(src)
        return tmp_path / "b" / "x.ncb", desc

    good = json.loads(BundleMetadata(1, "v2", "model.ubj", TrainingWindow("a", "b"),
                                     tables=["tables/neighbours.npz"]).to_json())
    cases: list[tuple[bytes, str]] = [
        (b"not json", "not JSON"),
        (json.dumps({**good, "extra": 1}).encode(), "extra"),
        (json.dumps({**good, "version": "v3"}).encode(), "holds version 'v3'"),
        (json.dumps({**good, "format": 2}).encode(), "format 2"),
        (json.dumps({**good, "model": "../model.ubj"}).encode(), "plain relative"),
        (json.dumps({**good, "model": "model.pkl"}).encode(), "model file"),
        (json.dumps({**good, "feature_spec": "/etc/passwd.json"}).encode(), "plain relative"),
        (json.dumps({**good, "feature_spec": "metadata.json"}).encode(), "feature spec"),
        (json.dumps({**good, "tables": ["missing.npz"]}).encode(), "missing missing.npz"),
        (json.dumps({**good, "offline_metrics": {"x": "high"}}).encode(), "offline_metrics"),
        (b'{"format": 1, "version": "v2", "model": "model.ubj", "training_window": {"start": "a", "end": "b"},'
         b' "offline_metrics": {"x": NaN}}', "finite"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON|nested"),
    ]
    for raw, match in cases:
        path, desc = with_meta(raw)
        assert_refused(path, desc, keys, tmp_path / "m" / "v2", match)


def test_building_refuses_incomplete_or_odd_sources(tmp_path: Path, signer: Signer) -> None:
    src = make_source(tmp_path)
    (src / "link").symlink_to(src / "model.ubj")
    with pytest.raises(BundleError, match="only regular files"):
        bundle.build(src, tmp_path / "o", signer, "http://x")
    (src / "link").unlink()
    (src / "feature_spec.json").unlink()
    with pytest.raises(BundleError, match=r"missing feature_spec\.json"):
        bundle.build(src, tmp_path / "o", signer, "http://x")
    (src / "feature_spec.json").write_text("{")
    with pytest.raises(BundleError, match="not JSON"):
        bundle.build(src, tmp_path / "o", signer, "http://x")
    with pytest.raises(BundleError, match="not a directory"):
        bundle.build(tmp_path / "nope", tmp_path / "o", signer, "http://x")
    assert not (tmp_path / "o").exists()


def test_existing_destination_is_not_overwritten(tmp_path: Path, signer: Signer, keys: dict[str, bytes]) -> None:
    path, desc = built(tmp_path, signer)
    (tmp_path / "m" / "v2").mkdir(parents=True)
    (tmp_path / "m" / "v2" / "keep").write_text("current model")
    with pytest.raises(BundleError, match="already exists"):
        bundle.open_bundle(path, desc, keys, tmp_path / "m" / "v2")
    assert (tmp_path / "m" / "v2" / "keep").read_text() == "current model"


def test_leftover_staging_is_cleaned(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / ".v2.abc.staging").mkdir(parents=True)
    (models / ".v2.abc.staging" / "half").write_bytes(b"x")
    (models / "v1").mkdir()
    assert bundle.clean_staging(models) == [models / ".v2.abc.staging"]
    assert [p.name for p in models.iterdir()] == ["v1"]
    assert bundle.clean_staging(tmp_path / "missing") == []
