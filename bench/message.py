"""How many bytes one evaluate task puts on the broker, for a ~4M-parameter network at depth 500.

DESIGN invariant 1: a task carries a genome, never weights. This builds the task dict the
GA sends (`GA._task`, its planned tasks' builder: experiment, generation, the genome JSON, role, the problem
and noise sections of the spec, the ancestors to checkpoint) for a child at depth 500 of
`nets.convnet([3, 64, 64], <seed 003 convs>, [4096], 10)` (experiments/memorize.yaml with a
4096-wide hidden layer; one Gaussian delta per generation, sigma 0.02), in three forms:

  plain       no checkpointing: the genome lists all 500 deltas since its init seed
  rebased     `ga.checkpoint_every: 50`, as the GA sends it: the genome is rebased
              (`genome.rebase`) on its ancestor at depth 450, saved as
              s3://<bucket>/<experiment>/<id>.safetensors, and lists the 50 deltas after it
  + carrier   the same at a checkpoint generation (500 is one): the first child of each
              parent also names the parent (an ancestor in its own list) in `checkpoint`,
              for the worker to save its weights

For each it prints:

  task JSON     len(json.dumps(task).encode()): Celery's JSON serializer, default separators
  AMQP body     the message body Celery publishes (`app.amqp.as_task_v2`, internal API, then
                kombu's JSON serializer): [args, kwargs, embed]
  headers       Celery's protocol-2 headers as JSON (the AMQP frame encodes them as a table
                of about that size); `argsrepr`, a repr of the args cut at 1024 characters,
                is most of it

and, for contrast, the state dict of the same network (4 bytes per parameter, and as
safetensors). Bar: the rebased task JSON, carrier included, under 4096 bytes. Prints PASS, or
FAIL and exits 1. Needs neither the broker nor the noise table.

    python bench/message.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from kombu.serialization import dumps
from safetensors.torch import save

from evoarena.encoding import nets
from evoarena.evolve.ga import GA, Individual
from evoarena.fleet.app import make_app
from evoarena.encoding.genome import Checkpoint, Genome, founder, mutate, rebase, sample_delta
from evoarena.encoding.materialize import Weights
from evoarena.spec.experiment import load_spec
from evoarena.tasks import result_id

ROOT = Path(__file__).resolve().parent.parent
DEPTH, CHECKPOINT_EVERY, SIGMA = 500, 50, 0.02
BAR_BYTES = 4096


def wide_spec():
    """experiments/memorize.yaml with the 4096-wide hidden layer and checkpoints every 50 generations."""
    spec = load_spec(ROOT / "experiments" / "memorize.yaml")
    return spec.model_copy(update={
        "network": spec.network.model_copy(update={"hidden": [4096]}),
        "ga": spec.ga.model_copy(update={"checkpoint_every": CHECKPOINT_EVERY}),
    })


def checkpoint(genome: Genome, experiment: str) -> Checkpoint:
    # the shape of the URIs S3Artifacts hands out; only the length matters here
    return Checkpoint(genome.id, f"s3://evoarena-artifacts/{experiment}/{genome.id}.safetensors")


def sizes(app, ga: GA, genome: Genome, carried: list[str]) -> dict:
    task = ga._task(DEPTH, Individual(genome, "child"), carried)
    task_id = result_id(task["experiment"], task["generation"], "evaluate", [genome.id])
    message = app.amqp.as_task_v2(task_id, "evoarena.evaluate", args=(task,))
    _, _, body = dumps(message.body, serializer="json")
    return {"task": len(json.dumps(task).encode()), "compact": len(json.dumps(task, separators=(",", ":")).encode()),
            "genome": len(json.dumps(task["genome"]).encode()), "body": len(body.encode() if isinstance(body, str) else body),
            "headers": len(json.dumps(message.headers).encode()), "deltas": genome.depth}


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help; no options
    spec = wide_spec()
    ga = GA(spec)
    arch = nets.convnet([3, 64, 64], [c.model_dump() for c in spec.network.convs], [4096], 10)
    assert arch == ga.arch
    lay = nets.layout(arch)
    rng = np.random.default_rng(0)
    lineage = [founder(arch, 0)]
    for _ in range(DEPTH):
        lineage.append(mutate(lineage[-1], sample_delta(rng, "gaussian", SIGMA, 0.0, lay, spec.noise.size)))

    child = lineage[DEPTH]
    base = checkpoint(lineage[DEPTH - CHECKPOINT_EVERY], spec.name)
    rebased, parent = rebase(child, base), rebase(lineage[DEPTH - 1], base)
    assert rebased.id == child.id and rebased.depth == CHECKPOINT_EVERY and parent.id == child.parents[0]
    app = make_app("memory://", "evoarena")  # as_task_v2 builds the message without a broker
    rows = {
        "plain": sizes(app, ga, child, []),
        "rebased": sizes(app, ga, rebased, []),
        "rebased + carrier": sizes(app, ga, rebased, [parent.id]),
    }
    state_dict = lay.size * 4
    safetensors_bytes = len(save(Weights(torch.zeros(lay.size)).tensors(arch)))

    print(f"network: {lay.size:,} parameters; a child at depth {DEPTH} (one gaussian delta per generation); "
          f"experiment {spec.name!r}, checkpoints every {CHECKPOINT_EVERY}")
    header = (f"{'task':<18} {'deltas':>6} {'genome JSON B':>13} {'task JSON B':>11} {'compact B':>9} "
              f"{'AMQP body B':>11} {'headers B':>9} {'state dict / task':>17}")
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(f"{name:<18} {r['deltas']:>6} {r['genome']:>13,} {r['task']:>11,} {r['compact']:>9,} "
              f"{r['body']:>11,} {r['headers']:>9,} {state_dict / r['task']:>16,.0f}x")
    print(f"state dict: {state_dict:,} B (4 B per parameter); {safetensors_bytes:,} B as safetensors")
    print()
    largest = max(rows["rebased"]["task"], rows["rebased + carrier"]["task"])
    if largest >= BAR_BYTES:
        print(f"FAIL: with checkpointing the task JSON is up to {largest:,} B (bar: under {BAR_BYTES:,} B)")
        return 1
    print(f"PASS: with checkpointing the task JSON is at most {largest:,} B (bar: under {BAR_BYTES:,} B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
