"""S3Artifacts against moto's S3 server, spoken to over real HTTP on 127.0.0.1.

The fixtures (moto_endpoint, s3_env, s3_bucket) are conftest.py's, also used by test_artifacts.py,
which runs the behaviour every artifact store shares against S3Artifacts too.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save as save_safetensors

from evoarena.store import ArtifactError, S3Artifacts, open_artifacts
from evoarena.store import s3 as s3_module
from helpers import raw_s3


def objects(bucket: str) -> dict[str, bytes]:
    """Every object in `bucket`, by key."""
    s3 = raw_s3()
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


@pytest.fixture
def store(s3_bucket: str) -> S3Artifacts:
    return S3Artifacts(f"s3://{s3_bucket}/runs/exp1")


def raw(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def test_round_trip_is_bit_exact(store):
    weight = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    weight[3, 1] = float("nan")
    tensors = {
        "w": weight,
        "bf16": weight[0].to(torch.bfloat16),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
        "empty": torch.zeros(0, 2),
    }
    back = store.get(store.put("genome-00012.g3", tensors))
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert (back[name].dtype, back[name].shape, raw(back[name])) == (t.dtype, t.shape, raw(t))


def test_object_is_prefix_key_safetensors_with_its_sha256(store, s3_bucket):
    tensors = {"w": torch.arange(6.0)}
    uri = store.put("g1", tensors, metadata={"generation": "3"})
    assert uri == f"s3://{s3_bucket}/runs/exp1/g1.safetensors" == store.uri("g1")
    found = raw_s3().get_object(Bucket=s3_bucket, Key="runs/exp1/g1.safetensors")
    body = found["Body"].read()
    assert body == save_safetensors(tensors, {"generation": "3"})
    assert found["Metadata"] == {"sha256": hashlib.sha256(body).hexdigest()}
    assert list(objects(s3_bucket)) == ["runs/exp1/g1.safetensors"]


def test_store_without_prefix_writes_at_bucket_root(s3_bucket):
    store = S3Artifacts(f"s3://{s3_bucket}")
    uri = store.put("g1", {"w": torch.ones(1)})
    assert uri == f"s3://{s3_bucket}/g1.safetensors"
    assert list(objects(s3_bucket)) == ["g1.safetensors"]
    assert torch.equal(store.get(uri)["w"], torch.ones(1))


def test_corrupt_object_with_old_checksum_is_detected_and_key_named(store, s3_bucket):
    uri = store.put("g1", {"w": torch.zeros(64)})
    key = "runs/exp1/g1.safetensors"
    s3 = raw_s3()
    old = s3.get_object(Bucket=s3_bucket, Key=key)
    data = bytearray(old["Body"].read())
    data[-10] ^= 0x01  # one bit of tensor data: still a loadable file
    s3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data), Metadata=old["Metadata"])
    with pytest.raises(ArtifactError, match=r"'g1'.* is corrupt: sha256"):
        store.get(uri)
    with pytest.raises(ArtifactError, match="corrupt"):
        store.metadata(uri)


def test_object_without_checksum_is_refused(store, s3_bucket):
    uri = store.put("g1", {"w": torch.zeros(2)})
    body = save_safetensors({"w": torch.zeros(2)})
    raw_s3().put_object(Bucket=s3_bucket, Key="runs/exp1/g1.safetensors", Body=body)  # no sha256
    assert not store.exists("g1")
    with pytest.raises(ArtifactError, match="'g1'.* has no checksum"):
        store.get(uri)


def test_missing_object_is_an_artifact_error(store):
    with pytest.raises(ArtifactError, match="'never-written' is missing"):
        store.get(store.uri("never-written"))


@pytest.mark.parametrize(
    "key",
    ["", "../escape", "a/b", "a..b", "x" * 201, ".hidden", "with space", "ü", "a\\b", "a\x00"],
)
def test_bad_key_rejected_before_anything_is_sent(store, s3_bucket, monkeypatch, key):
    tensors = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="artifact key"):
        store.put(key, tensors)
    assert objects(s3_bucket) == {}
    monkeypatch.setattr(store, "_s3", lambda: pytest.fail("a bad key must not reach S3"))
    for call in (lambda: store.put(key, tensors), lambda: store.exists(key)):
        with pytest.raises(ValueError, match="artifact key"):
            call()


@pytest.mark.parametrize(
    "uri",
    [
        "s3://other-bucket/runs/exp1/g1.safetensors",
        "s3://{bucket}/runs/exp2/g1.safetensors",
        "s3://{bucket}/runs/exp1-old/g1.safetensors",
        "s3://{bucket}/runs/g1.safetensors",
        "s3://{bucket}/runs/exp1/sub/g1.safetensors",
        "s3://{bucket}/runs/exp1/g1.sha256",
        "s3://{bucket}/runs/exp1/.safetensors",
        "file:///tmp/runs/exp1/g1.safetensors",
    ],
)
def test_uri_outside_the_store_is_refused(store, s3_bucket, monkeypatch, uri):
    uri = uri.format(bucket=s3_bucket)
    raw_s3().create_bucket(Bucket="other-bucket")
    S3Artifacts("s3://other-bucket/runs/exp1").put("g1", {"w": torch.zeros(2)})
    monkeypatch.setattr(store, "_s3", lambda: pytest.fail("a foreign URI must not reach S3"))
    with pytest.raises(ArtifactError, match="artifact URI"):
        store.get(uri)


def test_exists_only_after_put(store):
    assert not store.exists("g1")
    store.put("g1", {"w": torch.ones(2)})
    assert store.exists("g1") and not store.exists("g2")


def test_metadata_round_trips(store):
    uri = store.put("g1", {"w": torch.ones(2)}, metadata={"genome": "g1", "experiment": "e"})
    assert store.metadata(uri) == {"genome": "g1", "experiment": "e"}


def test_put_replaces_previous_tensors(store):
    store.put("g1", {"w": torch.zeros(3)})
    uri = store.put("g1", {"w": torch.ones(3)})
    assert torch.equal(store.get(uri)["w"], torch.ones(3))


def test_open_artifacts_gives_s3_store_with_endpoint_from_env(s3_env, s3_bucket):
    store = open_artifacts(f"s3://{s3_bucket}/runs/exp1/")
    assert isinstance(store, S3Artifacts)
    assert (store.bucket, store.prefix, store.endpoint_url) == (s3_bucket, "runs/exp1", s3_env)
    assert store.get(store.put("g1", {"w": torch.ones(1)}))["w"].item() == 1.0


@pytest.mark.parametrize("url", ["s3://", "s3://Upper-Case/x", "s3://ab", "s3:///prefix"])
def test_bad_bucket_named_in_error(url):
    with pytest.raises(ValueError, match="bucket"):
        S3Artifacts(url)


def test_forked_child_makes_its_own_client(store, monkeypatch):
    first = store._s3()
    assert store._s3() is first
    monkeypatch.setattr(s3_module.os, "getpid", lambda: -42)  # as if this were a forked child
    assert store._s3() is not first
