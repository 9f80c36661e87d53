"""Artifact stores: safetensors by key, verified by sha256, written atomically.

Tests taking the `artifacts` fixture run against LocalArtifacts and S3Artifacts (on moto's S3
server); those taking `local` are about the directory store alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from evoarena.store import ArtifactError, ArtifactStore, LocalArtifacts, S3Artifacts, open_artifacts
from helpers import raw_s3  # the S3 test server and its bucket (moto_endpoint, s3_env, s3_bucket) are conftest.py's


def raw(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 8, generator=g)
    weight[0, 0] = float("nan")
    return {
        "conv.weight": weight,
        "conv.bias": torch.randn(16, generator=g, dtype=torch.float64),
        "half": torch.randn(5, generator=g).to(torch.float16),
        "bf16": torch.randn(5, generator=g).to(torch.bfloat16),
        "steps": torch.tensor(41, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }


@pytest.fixture
def local(tmp_path: Path) -> LocalArtifacts:
    return LocalArtifacts(tmp_path / "artifacts")


@pytest.fixture(params=["local", "s3"])
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifacts(tmp_path / "artifacts")
    return S3Artifacts(f"s3://{request.getfixturevalue('s3_bucket')}/artifacts")


# What each backend holds, looked at behind the store's back.


def stored_names(artifacts) -> list[str]:
    """Everything the store's directory or bucket holds, temporary files included."""
    if isinstance(artifacts, LocalArtifacts):
        return sorted(p.name for p in artifacts.root.iterdir())
    listed = raw_s3().list_objects_v2(Bucket=artifacts.bucket).get("Contents", [])
    return sorted(o["Key"].removeprefix(f"{artifacts.prefix}/") for o in listed)


def object_key(artifacts: S3Artifacts, key: str) -> str:
    return f"{artifacts.prefix}/{key}.safetensors"


def stored_bytes(artifacts, key: str) -> bytes:
    if isinstance(artifacts, LocalArtifacts):
        return (artifacts.root / f"{key}.safetensors").read_bytes()
    found = raw_s3().get_object(Bucket=artifacts.bucket, Key=object_key(artifacts, key))
    return found["Body"].read()


def overwrite_keeping_checksum(artifacts, key: str, data: bytes) -> None:
    if isinstance(artifacts, LocalArtifacts):
        (artifacts.root / f"{key}.safetensors").write_bytes(data)
        return
    s3, name = raw_s3(), object_key(artifacts, key)
    metadata = s3.head_object(Bucket=artifacts.bucket, Key=name)["Metadata"]
    s3.put_object(Bucket=artifacts.bucket, Key=name, Body=data, Metadata=metadata)


def drop_checksum(artifacts, key: str) -> None:
    if isinstance(artifacts, LocalArtifacts):
        (artifacts.root / f"{key}.sha256").unlink()
        return
    data = stored_bytes(artifacts, key)  # the same bytes, written again without metadata
    raw_s3().put_object(Bucket=artifacts.bucket, Key=object_key(artifacts, key), Body=data)


def elsewhere(artifacts, tmp_path: Path):
    """A second store of the same kind, somewhere else."""
    if isinstance(artifacts, LocalArtifacts):
        return LocalArtifacts(tmp_path / "elsewhere")
    return S3Artifacts(f"s3://{artifacts.bucket}/elsewhere")


def test_round_trip_is_bit_exact(artifacts):
    tensors = sample_tensors()
    back = artifacts.get(artifacts.put("genome-00012.g3", tensors))
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert (back[name].dtype, back[name].shape) == (t.dtype, t.shape), name
        assert raw(back[name]) == raw(t), name


def test_put_returns_the_keys_uri_and_key_exists(artifacts):
    assert not artifacts.exists("g1")
    uri = artifacts.put("g1", {"w": torch.ones(2)})
    assert uri == artifacts.uri("g1")
    assert artifacts.exists("g1")


def test_put_returns_absolute_file_uri_and_key_exists(local):
    assert not local.exists("g1")
    uri = local.put("g1", {"w": torch.ones(2)})
    assert uri == (local.root / "g1.safetensors").as_uri() and uri.startswith("file:///")
    assert local.exists("g1")


def test_metadata_round_trips(artifacts):
    uri = artifacts.put("g1", {"w": torch.ones(2)}, metadata={"genome": "g1", "generation": "3"})
    assert artifacts.metadata(uri) == {"genome": "g1", "generation": "3"}


def test_get_never_calls_torch_load(artifacts, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must never read artifacts")

    monkeypatch.setattr(torch, "load", forbidden)
    uri = artifacts.put("g1", {"w": torch.arange(4.0)})
    assert torch.equal(artifacts.get(uri)["w"], torch.arange(4.0))


def test_corrupting_one_byte_is_detected(artifacts):
    uri = artifacts.put("g1", {"w": torch.zeros(64)})
    data = bytearray(stored_bytes(artifacts, "g1"))
    data[-10] ^= 0x01  # one bit in the tensor data, still a loadable file
    overwrite_keeping_checksum(artifacts, "g1", bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        artifacts.get(uri)


def test_missing_file_is_an_artifact_error(artifacts):
    with pytest.raises(ArtifactError, match="missing"):
        artifacts.get(artifacts.uri("never-written"))


def test_missing_checksum_is_an_artifact_error(artifacts):
    uri = artifacts.put("g1", {"w": torch.zeros(2)})
    drop_checksum(artifacts, "g1")
    with pytest.raises(ArtifactError, match="checksum"):
        artifacts.get(uri)


def test_uri_outside_the_store_is_refused(artifacts, tmp_path):
    other = elsewhere(artifacts, tmp_path)
    uri = other.put("g1", {"w": torch.zeros(2)})
    with pytest.raises(ArtifactError, match="not a .safetensors file in"):
        artifacts.get(uri)


@pytest.mark.parametrize(
    "key",
    ["", "../escape", "a/b", "a..b", "x" * 201, ".hidden", "with space", "ü", "a\\b", "a\x00"],
)
def test_bad_key_rejected_and_nothing_written(artifacts, key):
    with pytest.raises(ValueError, match="artifact key"):
        artifacts.put(key, {"w": torch.zeros(2)})
    assert stored_names(artifacts) == []
    if isinstance(artifacts, LocalArtifacts):  # not even a directory beside the store's
        assert list(artifacts.root.parent.iterdir()) == [artifacts.root]


def test_longest_allowed_key_accepted(artifacts):
    key = "k" * 200
    artifacts.put(key, {"w": torch.zeros(1)})
    assert artifacts.exists(key)


def test_failed_write_leaves_no_partial_file(local, monkeypatch):
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        local.put("g1", {"w": torch.zeros(1000)})
    assert list(local.root.iterdir()) == []
    assert not local.exists("g1")


def test_failed_overwrite_keeps_the_old_artifact(local, monkeypatch):
    uri = local.put("g1", {"w": torch.ones(3)})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        local.put("g1", {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(local.get(uri)["w"], torch.ones(3))
    assert sorted(p.name for p in local.root.iterdir()) == ["g1.safetensors", "g1.sha256"]


def test_unserializable_input_writes_nothing(artifacts):
    with pytest.raises(TypeError):
        artifacts.put("g1", {"w": torch.zeros(2)}, metadata={"generation": 3})  # not a str
    assert stored_names(artifacts) == []


def test_open_artifacts_from_path_and_file_url(tmp_path):
    assert open_artifacts(str(tmp_path / "a")).root == tmp_path / "a"
    assert open_artifacts((tmp_path / "b").as_uri()).root == tmp_path / "b"


def test_open_artifacts_from_s3_url(monkeypatch):
    monkeypatch.delenv("EVOARENA_S3_ENDPOINT_URL", raising=False)
    store = open_artifacts("s3://bucket/some/prefix")  # nothing is sent until it is used
    assert isinstance(store, S3Artifacts)
    assert (store.bucket, store.prefix, store.endpoint_url) == ("bucket", "some/prefix", None)
    assert store.uri("g1") == "s3://bucket/some/prefix/g1.safetensors"


@pytest.mark.parametrize("url", ["gs://bucket/x", "file://relative/dir"])
def test_open_artifacts_unknown_url_refused(url):
    with pytest.raises(ValueError, match="artifact URL"):
        open_artifacts(url)
