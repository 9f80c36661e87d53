"""How many bytes a genome takes on the wire, against the weights it stands for.

DESIGN invariant 1: a task carries a genome (architecture, init seed, deltas, optional checkpoint
URI), not weights. For the ~4.3M-parameter network (seed 003's memorization net with a 4096-wide
hidden layer) and lineages 1, 10, 100 and 500 generations deep (one Gaussian delta, sigma 0.02,
per generation, as in experiments/memorize.yaml), this prints:

  genome JSON      compact json.dumps(genome.to_json()), as a Celery message body carries it
  rebased JSON     the same genome on the newest checkpoint taken before it, one every 50
                   generations (at depth 500: the checkpoint of generation 450 plus 50 deltas)
  state dict       4 bytes per parameter, and the size safetensors actually writes for one built
                   genome's Weights.tensors() (the same at every depth)

Bar: at depth 500 (no rebase) the genome JSON is at least 1000x smaller than the state dict
(4 bytes per parameter). Prints PASS, or FAIL and exits 1.

    python bench/encoding.py

The noise table (seed 1234, 2**24 samples, 64 MiB) is built once into $EVOARENA_NOISE_DIR
(default ~/.cache/evoarena/noise) and reused; it is needed only to build one genome.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import save

from evoarena.encoding import nets
from evoarena.encoding.genome import Checkpoint, Genome, founder, mutate, rebase, sample_delta
from evoarena.encoding.materialize import Materializer, ParentCache
from evoarena.encoding.noise import open_noise
from evoarena.settings import Settings

CONVS = [{"channels": 32, "kernel": 8, "stride": 4}, {"channels": 64, "kernel": 4, "stride": 2}, {"channels": 64, "kernel": 3, "stride": 1}]
ARCH = nets.convnet([3, 64, 64], CONVS, [4096], 10)
DEPTHS = (1, 10, 100, 500)
CHECKPOINT_EVERY = 50
SIGMA = 0.02
NOISE_SEED, NOISE_SIZE = 1234, 2**24
MIN_RATIO = 1000


def wire_bytes(genome: Genome) -> int:
    return len(json.dumps(genome.to_json(), separators=(",", ":")).encode())


def checkpoint_uri(genome_id: str) -> str:
    # the shape of a URI the artifact stores hand out; its length is what matters here
    return f"s3://evoarena-artifacts/memorize-1x16/{genome_id}.safetensors"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise-dir", type=Path, default=Settings.from_env().noise_dir,
                        help="where the noise table is cached (default: $EVOARENA_NOISE_DIR or ~/.cache/evoarena/noise)")
    args = parser.parse_args()

    lay = nets.layout(ARCH)
    rng = np.random.default_rng(0)
    lineage = [founder(ARCH, 0)]
    for _ in range(max(DEPTHS)):
        lineage.append(mutate(lineage[-1], sample_delta(rng, "gaussian", SIGMA, 0.0, lay, NOISE_SIZE)))

    raw_bytes = lay.size * 4
    noise = open_noise(NOISE_SEED, NOISE_SIZE, args.noise_dir)
    weights = Materializer(noise, ParentCache(0)).build(lineage[1])
    safetensors_bytes = len(save(weights.tensors(ARCH)))

    print(f"network: {lay.size:,} parameters; state dict {raw_bytes:,} B raw, {safetensors_bytes:,} B as safetensors")
    print(f"one delta per generation (gaussian, sigma {SIGMA}); checkpoints every {CHECKPOINT_EVERY} generations for the rebased column")
    header = f"{'depth':>5} {'genome JSON B':>14} {'B/delta':>8} {'state dict/JSON':>16} {'rebased JSON B':>15} {'deltas left':>12} {'state dict/rebased':>19}"
    print(header)
    print("-" * len(header))
    ratio_at_bar = 0.0
    for depth in DEPTHS:
        genome = lineage[depth]
        plain = wire_bytes(genome)
        base_depth = (depth - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
        rebased = genome
        if base_depth > 0:
            base_id = lineage[base_depth].id
            rebased = rebase(genome, Checkpoint(base_id, checkpoint_uri(base_id)))
            assert rebased.id == genome.id and rebased.depth == depth - base_depth
        per_delta = len(json.dumps([d.to_json() for d in genome.deltas], separators=(",", ":"))) / depth
        print(
            f"{depth:>5} {plain:>14,} {per_delta:>8.1f} {raw_bytes / plain:>15,.0f}x"
            f" {wire_bytes(rebased):>15,} {rebased.depth:>12} {raw_bytes / wire_bytes(rebased):>18,.0f}x"
        )
        if depth == max(DEPTHS):
            ratio_at_bar = raw_bytes / plain
    print()
    if ratio_at_bar < MIN_RATIO:
        print(f"FAIL: at depth {max(DEPTHS)} the genome JSON is only {ratio_at_bar:,.0f}x smaller than the state dict (bar: {MIN_RATIO:,}x)")
        return 1
    print(f"PASS: at depth {max(DEPTHS)} the genome JSON is {ratio_at_bar:,.0f}x smaller than the state dict (bar: {MIN_RATIO:,}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
