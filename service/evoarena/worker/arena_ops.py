"""What a worker does with the arena's tasks: train_pair, match and cross_train.

Each function takes the process's Worker and a task (JSON: members as genome + meta, never
weights), builds the networks through the worker's parent cache, runs the op of problems/gan.py,
and returns the fields of the result document. Gradient-trained weights cannot be replayed from
seeds: they are saved as a safetensors checkpoint under the id `genome.trained` gives, the
result names the new genome (rebased on that checkpoint), and the worker keeps the weights in its
cache so that the next task about that member, routed back here, starts without a download.

A task's randomness comes from its `seed` only; the same task gives the same bits on the same
device type, so a redelivered task writes the same checkpoint and the same document.

A train_pair says how far it is while it trains (`_progress`): every PROGRESS_EVERY_S, the steps
done on the experiment's document (what `evoarena status --watch` shows) and, run by a Celery
worker, as the task's PROGRESS state (Celery's `update_state`); the local executors never import
Celery for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from evoarena.encoding.genome import Genome, trained, trained_id
from evoarena.encoding.materialize import BUILDS, Materializer, Weights
from evoarena.problems import embedding, gan, gan_metrics, manifold
from evoarena.store import artifact_key

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 2.0  # how often a training task reports the steps it has done


def train_pair(worker, task: dict, result_id: str) -> dict:
    """A player's generator and discriminator trained together for `steps` steps."""
    m = worker.materializer(task["noise"])
    (g, g_flat, g_build), (d, d_flat, d_build) = _build(m, task["gen"]), _build(m, task["disc"])
    data = worker.gan_data(task["problem"])
    with _op() as clock, _progress(worker, task, result_id, optimizer_steps_per_step=2):  # D's step, then G's
        g_new, d_new, trace = gan.train_pair(g.arch, g_flat, task["gen"]["meta"], d.arch, d_flat, task["disc"]["meta"],
                                             data.train.to(g_flat.device), task["steps"], task["batch_size"], task["seed"])
    how = {"task": result_id}
    new_g, new_d = _save(worker, m, g, g_new, how, task), _save(worker, m, d, d_new, how, task)
    doc = {"gen": {"id": task["gen"]["id"], "genome": new_g.to_json()},
           "disc": {"id": task["disc"]["id"], "genome": new_d.to_json()},
           "trace": trace, "last": _tail_mean(trace), "build": _worst(g_build, d_build), "holds": [new_g.id, new_d.id],
           "compute_seconds": clock.seconds}
    if "opponents" in task:  # the asynchronous fight: matched at once against the opponents of the moment
        opponents = task["opponents"]
        fight = {**task, "gens": [{**task["gen"], "genome": doc["gen"]["genome"]}, *opponents["gens"]],
                 "discs": [{**task["disc"], "genome": doc["disc"]["genome"]}, *opponents["discs"]]}
        matched = match(worker, fight, result_id)
        doc["match"] = {k: matched[k] for k in ("gens", "discs", "matrix", "real_accept", "quality")}
        doc["compute_seconds"] += matched["compute_seconds"]
    return doc


def cross_train(worker, task: dict, result_id: str) -> dict:
    """A member trained against a frozen foreign opponent: a generator against a discriminator,
    or a discriminator against a generator's samples."""
    m = worker.materializer(task["noise"])
    (own, own_flat, build), (opp, opp_flat, _) = _build(m, task["member"]), _build(m, task["opponent"])
    meta, steps, batch, seed = task["member"]["meta"], task["steps"], task["batch_size"], task["seed"]
    with _op() as clock:
        if task["side"] == "gen":
            new_flat, trace = gan.train_generator(own.arch, own_flat, meta, opp.arch, opp_flat, steps, batch, seed)
        elif task["side"] == "disc":
            real = worker.gan_data(task["problem"]).train.to(own_flat.device)
            new_flat, trace = gan.train_discriminator(own.arch, own_flat, meta, real, opp.arch, opp_flat, steps, batch, seed)
        else:
            raise ValueError(f"cross_train side {task['side']!r}: accepted gen, disc")
    new = _save(worker, m, own, new_flat, {"task": result_id}, task)
    return {"member": {"id": task["member"]["id"], "genome": new.to_json()}, "opponent": task["opponent"]["id"],
            "trace": trace, "last": _tail_mean(trace), "build": build, "holds": [new.id], "compute_seconds": clock.seconds}


def match(worker, task: dict, result_id: str) -> dict:
    """A block of generators against a block of discriminators: their block of the encounter
    matrix, each discriminator's acceptance of held-out real data, and (with `metrics`) each
    generator's quality on `metric_samples` samples of its own."""
    m = worker.materializer(task["noise"])
    gens = [_build(m, member) for member in task["gens"]]
    discs = [_build(m, member) for member in task["discs"]]
    data = worker.gan_data(task["problem"])
    device = gens[0][1].device
    with _op() as clock:
        block = gan.match_block([(g.arch, f) for g, f, _ in gens], [(d.arch, f) for d, f, _ in discs],
                                data.heldout.to(device), task["samples"], task["seed"], frozenset(task.get("liars", [])))
        quality, embeddings, fidelity, real = [], [], [], None
        if task.get("metrics"):
            # what the arena may select and weight generators by, from the training data alone: its
            # kernel embedding (problems/embedding.py) and its k-NN manifold (problems/manifold.py);
            # the quality measures are for people and benches only
            key = json.dumps(task["problem"]["data"], sort_keys=True)
            w, b, real = embedding.real_embedding(data.train, key)
            # k-NN precision and recall cost a distance matrix per generator: only when they rank generators
            real_manifold = manifold.real_manifold(data.train, key) if task.get("fidelity") else None
            for i, (g, flat, _) in enumerate(gens):
                rng = torch.Generator(device=device).manual_seed(task["seed"] + 7919 * (i + 1))
                samples = gan.generate(g.arch, flat, task["metric_samples"], rng).cpu()
                quality.append(gan_metrics.quality(samples, data, worker.models_dir))
                embeddings.append(embedding.mean_embedding(samples, w, b).tolist())
                if real_manifold is not None:
                    fidelity.append(manifold.precision_recall(samples, real_manifold))
    return {"gens": [x["id"] for x in task["gens"]], "discs": [x["id"] for x in task["discs"]],
            "matrix": block["matrix"], "real_accept": block["real_accept"], "quality": quality,
            **({"embeddings": embeddings, "real_embedding": real} if real is not None else {}),
            **({"fidelity": fidelity} if fidelity else {}),
            "build": _worst(*(b for _, _, b in gens + discs)), "compute_seconds": clock.seconds}


# --- helpers ------------------------------------------------------------------------------------


class _Clock:
    seconds = 0.0


@contextmanager
def _op():
    """Around an op of problems/gan.py: the process's RNG is kept out of it (the op seeds its own
    generator), and the time spent inside is measured (bench/arena_fleet.py: compute vs overhead)."""
    clock, started = _Clock(), time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        yield clock
    clock.seconds = time.perf_counter() - started


@contextmanager
def _progress(worker, task: dict, result_id: str, optimizer_steps_per_step: int):
    """Report the steps of `task` done so far, at most every PROGRESS_EVERY_S, while the block runs.
    gan.train_pair runs all its steps in one call; each step ends with `optimizer_steps_per_step`
    optimizer steps, so a hook on every torch optimizer's step (this thread's only) counts them."""
    counted = {"optimizer_steps": 0, "reported": time.monotonic()}
    thread = threading.get_ident()

    def on_step(optimizer, args, kwargs) -> None:
        if threading.get_ident() != thread:
            return
        counted["optimizer_steps"] += 1
        if time.monotonic() - counted["reported"] >= PROGRESS_EVERY_S:
            counted["reported"] = time.monotonic()
            _report(worker, task, result_id, counted["optimizer_steps"] // optimizer_steps_per_step)

    hook = register_optimizer_step_post_hook(on_step)
    try:
        yield
    finally:
        hook.remove()


def _report(worker, task: dict, result_id: str, done: int) -> None:
    """One progress report: on the experiment's document, under a field of the task's pair (a later
    chunk of the same pair reuses it), and as the Celery task's state when a Celery worker runs it."""
    progress = {"task": result_id, "steps_done": done, "steps": task["steps"], "at": time.time(), "node": worker.node}
    pair = hashlib.sha256(f"{task['gen']['id']}+{task['disc']['id']}".encode()).hexdigest()[:12]
    try:
        worker.store.touch_experiment(task["experiment"], **{f"progress_{pair}": progress})
    except Exception as exc:  # noqa: BLE001 - a report is a courtesy: the training goes on without it
        log.warning("progress of %s not recorded: %s", result_id, exc)
    celery = sys.modules.get("celery")  # imported only where a Celery worker runs this
    current = celery.current_task if celery else None  # a proxy: false outside a task
    try:
        if current and current.request.id and not current.request.called_directly:
            current.update_state(state="PROGRESS", meta={k: progress[k] for k in ("steps_done", "steps", "node")})
    except Exception as exc:  # noqa: BLE001 - as above: never the task's failure
        log.warning("progress of %s not sent to the master: %s", result_id, exc)


def _build(m: Materializer, member: dict) -> tuple[Genome, torch.Tensor, str]:
    genome = Genome.from_json(member["genome"])
    weights, how = m.build_how(genome)
    return genome, weights.flat, how


def _save(worker, m: Materializer, parent: Genome, flat: torch.Tensor, how: dict, task: dict) -> Genome:
    """Checkpoint the trained weights; the genome named by them, cached on this worker."""
    weights = Weights(flat.detach().contiguous())
    key = artifact_key(task["experiment"], trained_id(parent.id, how))
    uri = worker.artifacts.put(key, weights.tensors(parent.arch), {"experiment": task["experiment"]})
    genome = trained(parent, how, uri)
    m.cache.put(genome.id, weights)
    return genome


def _tail_mean(trace: list[dict], n: int = 10) -> dict:
    """The mean of each traced value over the last `n` steps: how the training ended."""
    tail = trace[-n:]
    return {k: sum(row[k] for row in tail) / len(tail) for k in tail[0]} if tail else {}


def _worst(*builds: str) -> str:
    """The costliest of several build paths: what the task's cache hit rate counts."""
    return max(builds, key=BUILDS.index)


def models_dir(noise_dir: str) -> Path:
    """Where a worker keeps models it trains once (the digits and MNIST classifiers): beside the noise tables."""
    return Path(noise_dir).expanduser().parent / "models"
