"""Quality measures of generated samples: mode coverage on mixtures (checked against values worked
out by hand), and a cached digits classifier's Fréchet distance and class coverage."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from evoarena.problems import gan_metrics
from evoarena.problems.gan_data import make_data
from evoarena.problems.gan_metrics import (
    CLASSIFIER_FILE,
    digits_classifier,
    digits_quality,
    mixture_quality,
    quality,
    reverse_kl,
)

R = math.sqrt(2)
RING_CENTRES = torch.tensor([(2, 0), (R, R), (0, 2), (-R, R), (-2, 0), (-R, -R), (0, -2), (R, -R)], dtype=torch.float32)
STD = 0.02


def on_centres(counts: dict[int, int]) -> torch.Tensor:
    """`count` samples exactly on ring centre `mode`, for each mode: count."""
    return torch.cat([RING_CENTRES[mode].repeat(count, 1) for mode, count in counts.items()])


# --- mixtures ----------------------------------------------------------------------------------


def test_samples_on_three_of_eight_centres_cover_three_modes():
    result = mixture_quality(on_centres({0: 30, 3: 30, 5: 30}), RING_CENTRES, STD)
    assert (result["modes_covered"], result["modes_covered@20"], result["modes"]) == (3, 3, 8)
    assert result["high_quality"] == 1.0
    assert result["reverse_kl"] == pytest.approx(math.log(8 / 3))


def test_one_high_quality_sample_covers_a_mode_but_not_at_twenty():
    result = mixture_quality(on_centres({1: 1, 4: 1, 6: 1}), RING_CENTRES, STD)
    assert (result["modes_covered"], result["modes_covered@20"]) == (3, 0)
    assert result["high_quality"] == 1.0
    assert result["reverse_kl"] == pytest.approx(math.log(8 / 3))  # q = 1/3 on 3 of 8 modes


def test_samples_spread_evenly_over_all_modes_have_zero_reverse_kl():
    result = mixture_quality(on_centres({m: 25 for m in range(8)}), RING_CENTRES, STD)
    assert result == {"modes_covered": 8, "modes_covered@20": 8, "modes": 8, "high_quality": 1.0,
                      "reverse_kl": pytest.approx(0.0)}


def test_twenty_high_quality_samples_cover_a_mode_at_twenty_and_nineteen_do_not():
    result = mixture_quality(on_centres({0: 20, 1: 19}), RING_CENTRES, STD)
    assert (result["modes_covered"], result["modes_covered@20"]) == (2, 1)


def test_samples_near_a_mode_but_not_high_quality_do_not_count_towards_twenty():
    # 19 on centre 0 and 5 more whose nearest centre is 0 but 3.5 std away: 24 samples, 19 high quality
    beside = RING_CENTRES[0] + torch.tensor([3.5 * STD, 0.0])
    result = mixture_quality(torch.cat([on_centres({0: 19}), beside.repeat(5, 1)]), RING_CENTRES, STD)
    assert (result["modes_covered"], result["modes_covered@20"]) == (1, 0)
    assert result["high_quality"] == pytest.approx(19 / 24)


def test_high_quality_means_within_three_std_of_the_nearest_centre():
    inside = RING_CENTRES[2] + torch.tensor([0.0, 0.059])  # 2.95 std away
    outside = RING_CENTRES[2] + torch.tensor([0.061, 0.0])  # 3.05 std away
    result = mixture_quality(torch.stack([inside, outside]), RING_CENTRES, STD)
    assert result["high_quality"] == 0.5 and result["modes_covered"] == 1


def test_samples_far_from_every_mode_are_not_high_quality():
    far = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0], [-1.0, 0.5]])
    result = mixture_quality(far, RING_CENTRES, STD)
    assert (result["high_quality"], result["modes_covered"], result["modes_covered@20"]) == (0.0, 0, 0)
    assert result["reverse_kl"] == pytest.approx(math.log(8))  # the documented worst case


def test_reverse_kl_of_a_hand_built_histogram():
    # q = (0.5, 0.3, 0.2, 0) against uniform 1/4: 0.5 ln 2 + 0.3 ln 1.2 + 0.2 ln 0.8 + 0 (empty bin)
    assert reverse_kl(torch.tensor([50, 30, 20, 0])) == pytest.approx(0.3465736 + 0.0546965 - 0.0446287, abs=1e-6)


def test_reverse_kl_uses_only_high_quality_samples():
    samples = torch.cat([on_centres({0: 40, 1: 40}), torch.zeros(100, 2)])  # 100 at the ring's centre
    result = mixture_quality(samples, RING_CENTRES, STD)
    assert result["reverse_kl"] == pytest.approx(math.log(4))  # q = (1/2, 1/2, 0, ...), K = 8
    assert result["high_quality"] == pytest.approx(80 / 180)


def test_quality_of_mixture_data_is_mixture_quality():
    ring = make_data({"kind": "ring", "modes": 8, "radius": 2.0, "std": 0.02, "train": 100, "heldout": 2500, "seed": 0})
    result = quality(ring.heldout, ring, cache_dir="unused")
    # 2,500 draws of the ring itself: ~312 per mode, all but ~0.1% within 3 std
    assert (result["modes_covered"], result["modes_covered@20"]) == (8, 8)
    assert result["high_quality"] > 0.98 and result["reverse_kl"] < 0.01


# --- digits ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return make_data({"kind": "digits", "heldout": 297, "seed": 0})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache dir in which the classifier is trained once for this module."""
    return tmp_path_factory.mktemp("gan-cache")


@pytest.fixture(scope="module")
def classifier(digits, cache):
    return digits_classifier(digits, cache)


def test_classifier_reaches_95_percent_on_the_heldout_digits(classifier, digits):
    with torch.no_grad():
        predicted = classifier(digits.heldout).argmax(dim=1)
    assert (predicted == digits.heldout_labels).double().mean() >= 0.95


def test_classifier_is_saved_with_its_checksum_and_reloaded_from_the_file(classifier, digits, cache):
    body = (cache / CLASSIFIER_FILE).read_bytes()
    assert (cache / f"{CLASSIFIER_FILE}.sha256").read_text().strip() == hashlib.sha256(body).hexdigest()
    gan_metrics._classifiers.clear()  # a fresh process: only the file is left
    reloaded = digits_classifier(digits, cache)
    assert reloaded is not classifier
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), classifier.state_dict().values()))
    assert (cache / CLASSIFIER_FILE).read_bytes() == body  # loaded, not retrained and rewritten


def test_classifier_is_kept_in_memory_between_calls(classifier, digits, cache):
    assert digits_classifier(digits, cache) is digits_classifier(digits, cache)


def test_classifier_file_failing_its_checksum_is_retrained(classifier, digits, tmp_path):
    from safetensors.torch import save as save_safetensors

    good = gan_metrics.train_classifier(digits.train, digits.train_labels)
    tampered = {k: torch.zeros_like(v) for k, v in good.state_dict().items()}
    (tmp_path / CLASSIFIER_FILE).write_bytes(save_safetensors(tampered))
    (tmp_path / f"{CLASSIFIER_FILE}.sha256").write_text("0" * 64 + "\n")
    model = digits_classifier(digits, tmp_path)
    with torch.no_grad():
        accuracy = (model(digits.heldout).argmax(dim=1) == digits.heldout_labels).double().mean()
    assert accuracy >= 0.95
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), good.state_dict().values()))
    body = (tmp_path / CLASSIFIER_FILE).read_bytes()
    assert (tmp_path / f"{CLASSIFIER_FILE}.sha256").read_text().strip() == hashlib.sha256(body).hexdigest()


def test_real_digits_are_far_closer_than_noise_in_frechet_distance(classifier, digits, cache):
    real = digits_quality(digits.train, digits, cache)["frechet"]
    noise = torch.rand(1500, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fake = digits_quality(noise, digits, cache)["frechet"]
    assert real < 10 and fake > 100 and fake > 30 * real


def test_heldout_digits_have_zero_frechet_distance_to_themselves(classifier, digits, cache):
    assert digits_quality(digits.heldout, digits, cache)["frechet"] == pytest.approx(0.0, abs=1e-6)


def test_real_digits_cover_all_ten_classes_nearly_uniformly(classifier, digits, cache):
    result = digits_quality(digits.train, digits, cache)
    assert result["classes_covered"] == 10
    assert result["class_tv"] < 0.05


def test_one_repeated_image_covers_one_class_with_tv_0_9(classifier, digits, cache):
    result = digits_quality(digits.heldout[:1].repeat(200, 1, 1, 1), digits, cache)
    assert result["classes_covered"] == 1
    assert result["class_tv"] == pytest.approx(0.9)


def test_a_class_predicted_for_under_one_percent_of_samples_is_not_covered(classifier, digits, cache):
    zero = digits.train[digits.train_labels == 0][:1]
    one = digits.train[digits.train_labels == 1][:1]
    with torch.no_grad():
        assert classifier(zero).argmax().item() == 0 and classifier(one).argmax().item() == 1
    rare = torch.cat([zero.repeat(199, 1, 1, 1), one])  # 1 of 200 = 0.5%, under the 2 needed
    assert digits_quality(rare, digits, cache)["classes_covered"] == 1
    common = torch.cat([zero.repeat(198, 1, 1, 1), one, one])  # 2 of 200 = 1%
    assert digits_quality(common, digits, cache)["classes_covered"] == 2


def test_quality_of_digits_data_is_digits_quality_and_of_npz_is_empty(classifier, digits, cache):
    assert quality(digits.train, digits, cache) == digits_quality(digits.train, digits, cache)
    npz = type(digits)("npz", digits.train, digits.heldout, (1, 8, 8), None, None, None, None)
    assert quality(digits.train, npz, cache) == {}


def test_digits_quality_needs_two_samples(classifier, digits, cache):
    with pytest.raises(ValueError, match="at least 2 samples.*got 1"):
        digits_quality(digits.heldout[:1], digits, cache)
