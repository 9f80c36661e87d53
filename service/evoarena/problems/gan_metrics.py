"""How good a generator's samples are, measured against the real data rather than a discriminator.

Mixtures (ring, grid), after VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018):
each sample is assigned to its nearest mode centre, and is *high quality* when its distance to
that centre is at most 3 * std. `counts` is then the histogram of the high-quality samples over
the K modes (a sample that is not high quality is in no bin).
- modes_covered: the number of modes with at least one high-quality sample: the published
  convention (VEEGAN; PacGAN's released MetricLogger), the one to put beside their tables.
- modes_covered@20: the number of modes with at least STRICT_COUNT = 20 high-quality samples.
  This stricter count is this project's, not PacGAN's: at small budgets ">= 1" saturates
  (uniform noise over the square of the 25-mode grid covers 21-23 of its modes), while 20 of
  2,500 samples, a fifth of the 100 a perfect generator puts on each of 25 modes, separates
  methods.
- modes: K, the number of modes.
- high_quality: the share of all samples that are high quality (0 for no samples).
- reverse_kl: KL(q || u) = sum_k q_k log(q_k * K), with q = counts / counts.sum(), the histogram
  of the high-quality samples only, and u uniform over the K modes. Samples that are not high
  quality do not enter it (high_quality measures them). Empty bins of q add 0 (the limit of
  q log q), so no epsilon is needed and every value is exact; u has no empty bins. 0 is a
  perfect balance, log K is everything on one mode. With no high-quality sample at all q does
  not exist, and reverse_kl is log K, the worst any histogram scores (finite, so it fits in
  JSON); high_quality 0 tells that case apart.

Digits: a small classifier (an MLP, 64 -> 128 -> 64 -> 10) trained once, deterministically, on
the digits training split, and cached in cache_dir/digits-classifier-v1.safetensors with the
file's sha256 in a sidecar (.sha256). The file's metadata names the sha256 of the training split
it learned; a file whose checksum or training split does not match is retrained and overwritten
(training is deterministic, so that rebuilds the same classifier rather than trusting a changed
one). It gives:
- frechet: the Fréchet distance between Gaussians fitted to the classifier's 64 penultimate
  features of the generated samples and of the held-out real images:
  |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2)), the FID formula, real part of sqrtm.
- classes_covered: the number of classes predicted for at least max(1, ceil(1% of the samples)).
- class_tv: the total-variation distance 0.5 * sum_c |p_c - 1/10| between the histogram of
  predicted classes and uniform: 0 for balanced classes, 0.9 for a single class.

MNIST: the same three keys, in the logit space of a classifier of Lipizzaner's shape trained on
MNIST's training set (problems/mnist_metrics.py; classes_covered and class_tv from the same
class_coverage as digits).

npz (a user's images): no classifier knows them, so `quality` returns {} and the arena ranks those
generators on its adversarial scores alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from evoarena.problems.gan_data import GanData, MIXTURES

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "digits-classifier-v1.safetensors"
CLASSES = 10
STRICT_COUNT = 20  # modes_covered@20: this project's stricter count, not PacGAN's (which is >= 1)
MIN_CLASS_SHARE = 0.01  # a digit class is covered when at least 1% of the samples are predicted as it

# Training schedule of the digits classifier (v1): reaches ~97% held-out accuracy in ~1 s on 2 cores.
TRAIN_SEED = 0
EPOCHS = 30
BATCH = 64
LR = 1e-3

_classifiers: dict[tuple[str, str], nn.Module] = {}  # (cache file, training split sha256) -> model
_real_features: dict[tuple[str, str], np.ndarray] = {}  # same key -> held-out penultimate features


def quality(samples: torch.Tensor, data: GanData, cache_dir: str | Path) -> dict:
    """The quality measures of data.kind for `samples` (see the module docstring); {} for npz."""
    if data.kind in MIXTURES:
        return mixture_quality(samples, data.centres, data.std)
    if data.kind == "digits":
        return digits_quality(samples, data, cache_dir)
    if data.kind == "mnist":
        from .mnist_metrics import mnist_quality  # imported here: mnist_metrics builds on this module

        return mnist_quality(samples, data, cache_dir)
    return {}


# --- mixtures ----------------------------------------------------------------------------------


def mixture_quality(samples: torch.Tensor, centres: torch.Tensor, std: float) -> dict:
    """{"modes_covered", "modes_covered@20", "modes", "high_quality", "reverse_kl"} of samples [N, 2]
    against centres [K, 2] (the module docstring defines each)."""
    x = samples.detach().cpu().double().reshape(len(samples), -1)
    c = centres.detach().cpu().double()
    distance, nearest = torch.cdist(x, c).min(dim=1)
    good = distance <= 3 * std
    counts = torch.bincount(nearest[good], minlength=len(c))
    return {
        "modes_covered": int((counts >= 1).sum()),
        "modes_covered@20": int((counts >= STRICT_COUNT).sum()),
        "modes": len(c),
        "high_quality": float(good.double().mean()) if len(x) else 0.0,
        "reverse_kl": reverse_kl(counts),
    }


def reverse_kl(counts: torch.Tensor) -> float:
    """KL(counts / total || uniform) over len(counts) bins; empty bins add 0; log K when all are empty."""
    k = len(counts)
    total = float(counts.sum())
    if total == 0:
        return math.log(k)
    q = counts.double()[counts > 0] / total
    return float((q * torch.log(q * k)).sum())


# --- digits ------------------------------------------------------------------------------------


def digits_quality(samples: torch.Tensor, data: GanData, cache_dir: str | Path) -> dict:
    """{"frechet", "classes_covered", "class_tv"} of generated digits [N, 1, 8, 8] (N >= 2)."""
    if len(samples) < 2:
        raise ValueError(f"digits_quality needs at least 2 samples to fit a covariance; got {len(samples)}")
    model = digits_classifier(data, cache_dir)
    x = samples.detach().cpu().float()
    with torch.no_grad():
        features = _penultimate(model, x)
        predicted = model[-1](features).argmax(dim=1)
    return {
        "frechet": frechet_distance(features.double().numpy(), _heldout_features(data, cache_dir)),
        **class_coverage(predicted),
    }


def class_coverage(predicted: torch.Tensor) -> dict:
    """{"classes_covered", "class_tv"} of predicted class indices [N] (see the module docstring)."""
    counts = torch.bincount(predicted.cpu(), minlength=CLASSES)
    share = counts.double() / len(predicted)
    threshold = max(1, math.ceil(MIN_CLASS_SHARE * len(predicted)))
    return {
        "classes_covered": int((counts >= threshold).sum()),
        "class_tv": float(0.5 * (share - 1 / CLASSES).abs().sum()),
    }


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a and of b (the FID formula)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # Collapsed samples make cov_a singular; sqrtm warns, and either copes or gives non-finite.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            shift = np.eye(len(cov_a)) * 1e-6  # as FID implementations do for a singular product
            root = scipy.linalg.sqrtm((cov_a + shift) @ (cov_b + shift))
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root))
    return max(0.0, float(distance))  # rounding can leave identical sets a hair below 0


def digits_classifier(data: GanData, cache_dir: str | Path) -> nn.Module:
    """The digits classifier for data's training split: from memory, else the verified file, else trained."""
    path = Path(cache_dir) / CLASSIFIER_FILE
    split = _split_sha256(data)
    key = (str(path.resolve()), split)
    if key not in _classifiers:
        model = _load(path, split)
        if model is None:
            model = train_classifier(data.train, data.train_labels)
            _save(model, path, split)
        _classifiers[key] = model.eval()
    return _classifiers[key]


def classifier_network() -> nn.Sequential:
    """The v1 architecture; its last layer maps the 64 penultimate features to 10 logits."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, CLASSES)
    )


def train_classifier(images: torch.Tensor, labels: torch.Tensor) -> nn.Sequential:
    """Adam on cross-entropy, EPOCHS passes in an order fixed by TRAIN_SEED; the global RNG is left as it was.

    It runs on one CPU thread: the same arithmetic on every machine, and for layers this small
    faster than several threads contending (8 s against 0.6 s on a busy 2-core box).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(images.cpu().float(), labels.cpu())
    finally:
        torch.set_num_threads(threads)


def _train(images: torch.Tensor, labels: torch.Tensor) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TRAIN_SEED)
        model = classifier_network()
        order = torch.Generator().manual_seed(TRAIN_SEED)
        optimiser = torch.optim.Adam(model.parameters(), lr=LR)
        for _ in range(EPOCHS):
            for batch in torch.randperm(len(images), generator=order).split(BATCH):
                loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    return model.eval()


def _penultimate(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return model[:-1](x)


def _heldout_features(data: GanData, cache_dir: str | Path) -> np.ndarray:
    key = (str((Path(cache_dir) / CLASSIFIER_FILE).resolve()), _split_sha256(data))
    if key not in _real_features:
        with torch.no_grad():
            features = _penultimate(digits_classifier(data, cache_dir), data.heldout.float())
        _real_features[key] = features.double().numpy()
    return _real_features[key]


def _split_sha256(data: GanData) -> str:
    digest = hashlib.sha256(data.train.contiguous().numpy().tobytes())
    digest.update(data.train_labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load(path: Path, split: str) -> nn.Sequential | None:
    """The cached classifier, or None (logged) when it is missing, fails its checksum, or learned another split."""
    verified = read_verified(path)
    if verified is None:
        return None
    body, metadata = verified
    learned = metadata.get("train_sha256")
    if learned != split:
        log.warning("digits classifier %s learned split %s, not %s: retraining", path, learned, split)
        return None
    model = classifier_network()
    model.load_state_dict(load_safetensors(body))
    return model


def read_verified(path: Path) -> tuple[bytes, dict[str, str]] | None:
    """(bytes, safetensors metadata) of a cached model file whose sha256 is its sidecar's
    (path + ".sha256"); None when either is missing or they disagree (logged: not trusted)."""
    sidecar = path.with_name(path.name + ".sha256")
    if not (path.exists() and sidecar.exists()):
        return None
    body = path.read_bytes()
    actual, expected = hashlib.sha256(body).hexdigest(), sidecar.read_text().strip()
    if actual != expected:
        log.warning("model file %s has sha256 %s, its sidecar says %s: not trusted", path, actual, expected)
        return None
    # Read the metadata from the verified bytes, not the file again (it could change in between).
    header = json.loads(body[8 : 8 + int.from_bytes(body[:8], "little")])
    return body, header.get("__metadata__", {})


def _save(model: nn.Module, path: Path, split: str) -> None:
    save_verified(model, path, {"train_sha256": split})


def save_verified(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Weights (with `metadata`) and sidecar, each written whole to a temporary file and renamed into place."""
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    body = save_safetensors(tensors, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, body)
    _write_atomic(path.with_name(path.name + ".sha256"), hashlib.sha256(body).hexdigest().encode() + b"\n")


def _write_atomic(path: Path, body: bytes) -> None:
    handle, name = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(handle, "wb") as f:
        f.write(body)
    os.replace(name, path)
