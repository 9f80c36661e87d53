"""The GAN arena's real data: mixtures with hand-checkable centres, the bundled digits, and a
user's .npz, verified by sha256 before numpy reads it, locally or from S3 (moto's server)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from evoarena.problems import gan_data
from evoarena.problems.gan_data import GanData, batches, make_data, mixture_centres
from helpers import raw_s3  # the S3 test server and its bucket (moto_endpoint, s3_env, s3_bucket) are conftest.py's

RING = {"kind": "ring", "modes": 8, "radius": 2.0, "std": 0.02, "train": 20000, "heldout": 2500, "seed": 0}
GRID = {"kind": "grid", "side": 5, "spacing": 2.0, "std": 0.05, "train": 20000, "heldout": 2500, "seed": 0}
DIGITS = {"kind": "digits", "heldout": 297, "seed": 0}

R = math.sqrt(2)  # radius 2 times cos(45 degrees)
RING_CENTRES = [(2, 0), (R, R), (0, 2), (-R, R), (-2, 0), (-R, -R), (0, -2), (R, -R)]
GRID_CENTRES = [(a, b) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- mixtures ----------------------------------------------------------------------------------


def test_ring_centres_are_the_eight_points_of_the_compass_at_radius_2():
    assert torch.allclose(mixture_centres(RING), torch.tensor(RING_CENTRES, dtype=torch.float32), atol=1e-6)


def test_ring_centres_are_distinct_and_evenly_spaced():
    centres = mixture_centres(RING).double()
    neighbour = centres.roll(-1, dims=0)
    chord = 2 * 2.0 * math.sin(math.pi / 8)  # side of a regular octagon inscribed in radius 2
    assert torch.allclose((centres - neighbour).norm(dim=1), torch.full((8,), chord, dtype=torch.float64), atol=1e-6)
    assert torch.cdist(centres, centres).add(torch.eye(8) * 99).min() > 1.5


def test_grid_centres_are_the_25_benchmark_points():
    assert mixture_centres(GRID).tolist() == [[float(a), float(b)] for a, b in GRID_CENTRES]


@pytest.mark.parametrize("spec", [RING, GRID], ids=["ring", "grid"])
def test_mixture_samples_scatter_around_their_nearest_centre_with_the_given_std(spec):
    data = make_data(spec)
    assert data.kind == spec["kind"] and data.shape == (2,) and data.std == spec["std"]
    assert data.train.shape == (20000, 2) and data.heldout.shape == (2500, 2)
    assert data.train.dtype == torch.float32
    nearest = torch.cdist(data.train, data.centres).argmin(dim=1)
    offset = data.train - data.centres[nearest]
    assert offset.std(dim=0).tolist() == pytest.approx([spec["std"]] * 2, rel=0.05)
    counts = torch.bincount(nearest, minlength=len(data.centres))
    expected = 20000 / len(data.centres)
    assert counts.min() > 0.85 * expected and counts.max() < 1.15 * expected  # equal weights


def test_mixture_is_a_function_of_its_seed():
    assert torch.equal(make_data(RING).train, make_data(RING).train)
    assert not torch.equal(make_data(RING).train, make_data({**RING, "seed": 1}).train)
    assert not torch.equal(make_data(RING).train[:2500], make_data(RING).heldout)


def test_an_unknown_kind_is_refused_with_the_accepted_kinds():
    with pytest.raises(ValueError, match=r"'spiral'.*ring, grid, digits, npz"):
        make_data({"kind": "spiral", "seed": 0})
    with pytest.raises(ValueError, match=r"'digits' has no mode centres"):
        mixture_centres(DIGITS)


def test_batches_draws_training_samples_reproducibly_from_the_generator():
    data = make_data(RING)
    first = batches(data, 64, torch.Generator().manual_seed(3))
    assert first.shape == (64, 2)
    assert torch.equal(first, batches(data, 64, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, batches(data, 64, torch.Generator().manual_seed(4)))
    assert all((data.train == row).all(dim=1).any() for row in first)


# --- digits ------------------------------------------------------------------------------------


def test_digits_are_the_bundled_1797_images_scaled_to_minus_one_one_with_labels():
    data = make_data(DIGITS)
    assert data.shape == (1, 8, 8) and data.centres is None and data.std is None
    assert data.train.shape == (1500, 1, 8, 8) and data.heldout.shape == (297, 1, 8, 8)
    assert data.train.min() == -1.0 and data.train.max() == 1.0
    assert data.train_labels.dtype == torch.int64 and len(data.train_labels) == 1500
    all_labels = torch.cat([data.train_labels, data.heldout_labels])
    assert all_labels.bincount().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # load_digits' classes


def test_digits_split_is_a_function_of_its_seed():
    assert torch.equal(make_data(DIGITS).heldout, make_data(DIGITS).heldout)
    assert not torch.equal(make_data(DIGITS).heldout, make_data({**DIGITS, "seed": 1}).heldout)


# --- npz ---------------------------------------------------------------------------------------


def npz_spec(uri, digest, **extra) -> dict:
    return {"kind": "npz", "uri": str(uri), "sha256": digest, "key": "x", "heldout": 4, "seed": 0, **extra}


def test_npz_uint8_images_round_trip_scaled_to_minus_one_one(tmp_path):
    images = np.arange(10 * 3 * 3, dtype=np.uint8).reshape(10, 3, 3) * 2  # 0, 2, ..., 178
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    path = tmp_path / "images.npz"
    np.savez(path, x=images)
    data = make_data(npz_spec(path, sha256(path)))
    assert data.kind == "npz" and data.shape == (1, 3, 3)
    assert data.train.shape == (6, 1, 3, 3) and data.heldout.shape == (4, 1, 3, 3)
    everything = torch.cat([data.train, data.heldout])
    assert everything.min() == -1.0 and everything.max() == 1.0
    first = everything[(everything[:, 0, 0, 1] == 1.0)][0, 0]  # image 0, wherever the split put it
    assert first[0, 0] == -1.0 and first[0, 2].item() == pytest.approx(4 / 127.5 - 1)


def test_npz_float_images_with_channels_are_kept_as_float32(tmp_path):
    images = np.random.default_rng(0).standard_normal((10, 3, 4, 4))
    path = tmp_path / "images.npz"
    np.savez(path, x=images)
    data = make_data(npz_spec(path, sha256(path)))
    assert data.shape == (3, 4, 4) and data.train.dtype == torch.float32
    order = np.random.default_rng(0).permutation(10)
    assert np.array_equal(data.heldout.numpy(), images[order[:4]].astype(np.float32))


def test_npz_with_a_wrong_sha256_is_refused_before_numpy_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "images.npz"
    np.savez(path, x=np.zeros((10, 3, 3), dtype=np.uint8))
    reads = []
    monkeypatch.setattr(np, "load", lambda *a, **k: reads.append(a))
    wrong = "0" * 64
    with pytest.raises(ValueError, match=rf"images.npz.*{sha256(path)}.*{wrong}"):
        make_data(npz_spec(path, wrong))
    assert reads == []


def test_npz_holding_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}] * 10, dtype=object))
    with pytest.raises(ValueError, match=r"objects.npz.*'x' holds Python objects"):
        make_data(npz_spec(path, sha256(path)))


def test_npz_with_a_missing_key_names_the_arrays_it_holds(tmp_path):
    path = tmp_path / "images.npz"
    np.savez(path, images=np.zeros((10, 3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"no array 'x'; it holds \['images'\]"):
        make_data(npz_spec(path, sha256(path)))


def test_npz_from_s3_is_downloaded_once_into_the_cache(s3_bucket, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (10, 3, 3), dtype=np.uint8)
    local = tmp_path / "upload.npz"
    np.savez(local, x=images)
    raw_s3().put_object(Bucket=s3_bucket, Key="data/images.npz", Body=local.read_bytes())
    spec = npz_spec(f"s3://{s3_bucket}/data/images.npz", sha256(local))
    cache = tmp_path / "cache"

    first = make_data(spec, cache_dir=cache)
    assert (cache / "npz" / f"{sha256(local)}.npz").read_bytes() == local.read_bytes()
    raw_s3().delete_object(Bucket=s3_bucket, Key="data/images.npz")  # a second download would fail
    second = make_data(spec, cache_dir=cache)

    assert torch.equal(first.train, second.train) and torch.equal(first.heldout, second.heldout)
    expected = torch.from_numpy(images.astype(np.float32) / 127.5 - 1)[:, None]
    assert torch.equal(torch.cat([first.train, first.heldout]).sort(dim=0).values, expected.sort(dim=0).values)


def test_npz_from_s3_counts_one_download_for_two_loads(s3_bucket, tmp_path, monkeypatch):
    local = tmp_path / "upload.npz"
    np.savez(local, x=np.zeros((10, 2, 2), dtype=np.uint8))
    raw_s3().put_object(Bucket=s3_bucket, Key="images.npz", Body=local.read_bytes())
    downloads = []
    real_download = gan_data._download
    monkeypatch.setattr(gan_data, "_download", lambda uri, folder: downloads.append(uri) or real_download(uri, folder))
    spec = npz_spec(f"s3://{s3_bucket}/images.npz", sha256(local))
    make_data(spec, cache_dir=tmp_path / "cache")
    make_data(spec, cache_dir=tmp_path / "cache")
    assert downloads == [f"s3://{s3_bucket}/images.npz"]


def test_npz_from_s3_with_a_wrong_sha256_leaves_nothing_in_the_cache(s3_bucket, tmp_path):
    local = tmp_path / "upload.npz"
    np.savez(local, x=np.zeros((10, 2, 2), dtype=np.uint8))
    raw_s3().put_object(Bucket=s3_bucket, Key="images.npz", Body=local.read_bytes())
    with pytest.raises(ValueError, match=r"sha256 is [0-9a-f]{64}, the spec expects f{64}"):
        make_data(npz_spec(f"s3://{s3_bucket}/images.npz", "f" * 64), cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "npz").iterdir()) == []


def test_npz_from_s3_without_a_cache_dir_still_loads(s3_bucket, tmp_path):
    local = tmp_path / "upload.npz"
    np.savez(local, x=np.full((10, 2, 2), 255, dtype=np.uint8))
    raw_s3().put_object(Bucket=s3_bucket, Key="images.npz", Body=local.read_bytes())
    data = make_data(npz_spec(f"s3://{s3_bucket}/images.npz", sha256(local)))
    assert isinstance(data, GanData) and bool((data.train == 1.0).all())
