"""MNIST quality as Lipizzaner (Toutouh, Hemberg, O'Reilly) measures it: the Fréchet distance in
the 10-d logit space of a small MNIST classifier, not Inception's features.

The classifier has the shape of Lipizzaner's MNISTCnn (fid_mnist.py, after PyTorch's MNIST
example): conv(1->10, 5x5) -> maxpool 2 -> relu -> conv(10->20, 5x5) -> maxpool 2 -> relu ->
flatten (320) -> fc 50 -> relu -> fc 10, whose output (the logits) is Lipizzaner's FID feature
too. The example's dropout layers are left out of training: they do nothing when it scores, and
at their p = 0.5 three epochs of Adam reached 98.2% test accuracy, where without them the
schedule below reaches 99.3%. The weights are this project's, trained on pixels in [-1, 1] (the
GANs' range; Lipizzaner's classifier reads [0, 1]), so its figures are comparable in kind with
Lipizzaner's, not identical.

It is trained once, deterministically (seed TRAIN_SEED, one CPU thread, an order fixed by that
seed): Adam with a one-cycle learning rate peaking at MAX_LR, EPOCHS passes in batches of BATCH
over all 60,000 MNIST training images at 28x28 in [-1, 1], whatever a spec's `train` count, so
every MNIST spec is scored by the same classifier. It is cached in
cache_dir/mnist-classifier-v1.safetensors with the file's sha256 in a sidecar (.sha256); the
file's metadata names what it learned ("train_sha256": the published sha256 of the two training
files, which the reader checks) and its accuracy on the 10,000 test images ("test_accuracy"). A
file failing its checksum, or that learned something else, is not trusted: it is retrained and
overwritten (training is deterministic, so that rebuilds the same classifier).

Quality of generated samples [N, 1, 28, 28] or [N, 1, 64, 64] (64x64 ones are resized to 28x28,
by mnist.resize, before the classifier; so are a 64x64 spec's held-out images), under
the keys digits uses, so reports and benches treat both alike:
- frechet: gan_metrics.frechet_distance between Gaussians fitted to the classifier's logits of
  the samples and of the held-out images (the MNIST test set's first `heldout`).
- classes_covered, class_tv: gan_metrics.class_coverage of the predicted classes.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from evoarena.problems import mnist
from evoarena.problems.gan_data import GanData
from evoarena.problems.gan_metrics import CLASSES, class_coverage, frechet_distance, read_verified, save_verified

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "mnist-classifier-v1.safetensors"
LEARNED = mnist.FILES["train-images-idx3-ubyte.gz"] + "+" + mnist.FILES["train-labels-idx1-ubyte.gz"]

# Training schedule (v1): 99.3% test accuracy in about a minute on one thread.
TRAIN_SEED = 0
EPOCHS = 4
BATCH = 64
MAX_LR = 3e-3
CHUNK = 2000  # images scored at a time

_classifiers: dict[str, nn.Sequential] = {}  # cache file -> model
_real_logits: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}  # (cache file, held-out shape) -> logits


def mnist_quality(samples: torch.Tensor, data: GanData, cache_dir: str | Path) -> dict:
    """{"frechet", "classes_covered", "class_tv"} of generated MNIST images (N >= 2; module docstring)."""
    if len(samples) < 2:
        raise ValueError(f"mnist_quality needs at least 2 samples to fit a covariance; got {len(samples)}")
    model = mnist_classifier(cache_dir)
    fake = logits(model, samples)
    return {"frechet": frechet_distance(fake.double().numpy(), _heldout_logits(data, cache_dir)),
            **class_coverage(fake.argmax(dim=1))}


def logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The classifier's logits [N, 10] of images [N, 1, H, W] in [-1, 1], resized to 28x28 first."""
    x = mnist.resize(images.detach().cpu().float(), mnist.SIDE)
    with torch.no_grad():
        return torch.cat([model(chunk) for chunk in x.split(CHUNK)])


def mnist_classifier(cache_dir: str | Path) -> nn.Sequential:
    """The MNIST classifier: from memory, else the verified file in cache_dir, else trained and saved there."""
    path = Path(cache_dir) / CLASSIFIER_FILE
    key = str(path.resolve())
    if key not in _classifiers:
        model = _load(path)
        if model is None:
            started = time.perf_counter()
            model, accuracy = train_classifier()
            seconds = time.perf_counter() - started
            log.info("trained the MNIST classifier in %.0f s: %.4f test accuracy", seconds, accuracy)
            save_verified(model, path, {"train_sha256": LEARNED, "test_accuracy": f"{accuracy:.4f}"})
        _classifiers[key] = model.eval()
    return _classifiers[key]


def classifier_network() -> nn.Sequential:
    """Lipizzaner's MNIST classifier shape without its dropout layers; the output is 10 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(320, 50), nn.ReLU(), nn.Linear(50, CLASSES),
    )


def train_classifier() -> tuple[nn.Sequential, float]:
    """(model, test accuracy): the schedule of the module docstring on MNIST's training set, on one
    CPU thread (the same arithmetic on every machine); the global RNG is left as it was."""
    images, labels = mnist.read_part("train")
    test_images, test_labels = mnist.read_part("test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _train(mnist.to_pixels(images), torch.from_numpy(labels.astype(np.int64)))
        predicted = logits(model, mnist.to_pixels(test_images)).argmax(dim=1)
    finally:
        torch.set_num_threads(threads)
    accuracy = float((predicted == torch.from_numpy(test_labels.astype(np.int64))).double().mean())
    return model, accuracy


def _train(images: torch.Tensor, labels: torch.Tensor) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TRAIN_SEED)
        model = classifier_network()
        order = torch.Generator().manual_seed(TRAIN_SEED)
        optimiser = torch.optim.Adam(model.parameters(), lr=MAX_LR)
        steps = EPOCHS * math.ceil(len(images) / BATCH)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=MAX_LR, total_steps=steps)
        for _ in range(EPOCHS):
            for batch in torch.randperm(len(images), generator=order).split(BATCH):
                loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
    return model.eval()


def _heldout_logits(data: GanData, cache_dir: str | Path) -> np.ndarray:
    # An mnist spec's held-out set is the test set's first M images at one size: its shape names it.
    key = (str((Path(cache_dir) / CLASSIFIER_FILE).resolve()), tuple(data.heldout.shape))
    if key not in _real_logits:
        _real_logits[key] = logits(mnist_classifier(cache_dir), data.heldout).double().numpy()
    return _real_logits[key]


def _load(path: Path) -> nn.Sequential | None:
    """The cached classifier, or None (logged) when it is missing, fails its checksum, or learned other files."""
    verified = read_verified(path)
    if verified is None:
        return None
    body, metadata = verified
    if metadata.get("train_sha256") != LEARNED:
        learned = metadata.get("train_sha256")
        log.warning("MNIST classifier %s learned %s, not %s: retraining", path, learned, LEARNED)
        return None
    model = classifier_network()
    model.load_state_dict(load_safetensors(body))
    return model
