"""`evoarena export NAME [--genome ID] --out FILE`: one network of a run, as a file anyone can load.

Which network:
- a GA run: the best genome of the last complete generation (the generation document's `best`);
- an arena run: the best generator (by arena fitness) of the last match, with the weights it had
  in that match; in the asynchronous fight, the best generator of the newest event;
- `--genome ID`: that genome. For a GA, the id of any evaluated genome; for an arena, a member id
  (`gen-...`, `disc-...`: its newest weights) or a genome id, among the newest population and every
  generator and discriminator recorded in `pure_gen` / `pure_disc`. Discriminators are exported too.

The file is one safetensors file, self-contained:
- tensors: the module's state dict, float32, named as `nets.build(arch).state_dict()` names them
  ("0.weight", "0.bias", "2.weight", ...): load_state_dict takes it as it is;
- metadata (the safetensors header's `__metadata__`, strings): `format` ("evoarena-network-1"),
  `arch` (the architecture JSON of nets.py), `experiment`, `genome_id`, `role` (network, generator
  or discriminator), `member` (arena), `fitness`, `source` (the generation or round it came from).

Loading it takes the project's nets.py and safetensors (README, "Using it"):

    with safe_open(path, "pt") as f:
        arch = json.loads(f.metadata()["arch"])
    net = nets.build(arch)
    net.load_state_dict(load_file(path))

The weights are built as a worker builds them: a worker.Worker on the run's store, artifact store
($EVOARENA_ARTIFACTS: where the arena's checkpoints are) and noise table, through its Materializer.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .status import BadInput, open_experiment, usage_errors

if TYPE_CHECKING:
    import torch

    from .settings import Settings
    from .spec import ExperimentSpec
    from .store import ResultStore

FORMAT = "evoarena-network-1"


@dataclass(frozen=True)
class Chosen:
    """A network of a run, as the store describes it."""

    genome: dict  # the genome JSON (genome.Genome.to_json)
    role: str  # network (a GA's classifier), generator or discriminator
    source: str  # where it was found: "generation 7", "round 2 match", "fight 12"
    member: str | None = None  # the arena member it is
    fitness: float | None = None


def choose(store: ResultStore, spec: ExperimentSpec, genome_id: str | None = None) -> Chosen:
    """The best network of the last complete step, or genome `genome_id` (BadInput if not found)."""
    if spec.algorithm == "arena":
        return _arena_genome(store, spec, genome_id) if genome_id else _best_generator(store, spec)
    return _ga_genome(store, spec.name, genome_id) if genome_id else _best_of_last_generation(store, spec.name)


def _best_of_last_generation(store: ResultStore, name: str) -> Chosen:
    last = store.last_generation(name)
    if last is None:
        raise BadInput(f"experiment {name!r} has no complete generation yet: nothing to export")
    best = store.get_generation(name, last)["best"]
    doc = next(r for r in store.find_results(name, last, "evaluate") if r["genome_id"] == best["genome_id"])
    return Chosen(doc["genome"], "network", f"generation {last}", fitness=doc["fitness"])


def _ga_genome(store: ResultStore, name: str, genome_id: str) -> Chosen:
    last = store.last_generation(name)
    for generation in range(0 if last is None else last + 1, -1, -1):  # newest first, a partial one too
        for doc in store.find_results(name, generation, "evaluate"):
            if doc.get("genome_id") == genome_id and not doc.get("error"):
                return Chosen(doc["genome"], "network", f"generation {generation}", fitness=doc["fitness"])
    hint = "" if last is None else f"; the best of the last generation is {store.get_generation(name, last)['best']['genome_id']}"
    raise BadInput(f"no genome {genome_id!r} evaluated in experiment {name!r}{hint}")


def _arena_states(store: ResultStore, name: str):
    """The arena's stored states (step or event documents), newest first."""
    last = store.last_generation(name)
    for index in range(-1 if last is None else last, -1, -1):
        yield index, store.get_generation(name, index)


def _best_generator(store: ResultStore, spec: ExperimentSpec) -> Chosen:
    for index, state in _arena_states(store, spec.name):
        if (chosen := best_generator_of(spec, index, state)) is not None:
            return chosen
    raise BadInput(f"experiment {spec.name!r} has no match yet: no generator has been ranked")


def best_generator_of(spec: ExperimentSpec, index: int, state: dict) -> Chosen | None:
    """The best generator that arena state `index` ranked (a match step's, or the fight's event's), with
    the weights it had there; None for a state that ranked none (a train or cross step, no match yet)."""
    events = spec.arena.mode == "async"
    best = state.get("stats", {}).get("best_member")
    if not best or not (events or state.get("phase") == "match"):
        return None
    member = next(m for m in state["members"] if m["id"] == best)
    source = f"fight {index}" if events else f"round {state['round']} match"
    return Chosen(member["genome"], "generator", source, best, member.get("fitness"))


def _arena_genome(store: ResultStore, spec: ExperimentSpec, wanted: str) -> Chosen:
    role = {"gen": "generator", "disc": "discriminator"}
    index, newest = next(_arena_states(store, spec.name), (None, None))  # the newest population first
    for m in newest["members"] if newest else ():
        if wanted in (m["id"], m["genome"]["id"]):
            return Chosen(m["genome"], role[m["side"]], f"step {index}", m["id"], m.get("fitness"))
    for collection, side in (("pure_gen", "gen"), ("pure_disc", "disc")):
        found = store.find_docs(collection, spec.name, member=wanted) or store.find_docs(collection, spec.name,
                                                                                          genome_id=wanted)
        if found:
            doc = max(found, key=lambda d: d["round"])
            fitness = doc["fitness_map"].get(spec.arena.fitness.kind)
            return Chosen(doc["genome"], role[side], f"round {doc['round']} match", doc["member"], fitness)
    raise BadInput(f"no member or genome {wanted!r} in experiment {spec.name!r} (looked in its newest population, "
                   "pure_gen and pure_disc)")


def build(chosen: Chosen, spec: ExperimentSpec, store_url: str, settings: Settings) -> tuple[dict, torch.Tensor]:
    """(architecture, flat weights) of the chosen genome, built by a Worker as in a run."""
    from .genome import Genome
    from .store import ArtifactError
    from .worker import Worker, WorkerConfig

    worker = Worker(WorkerConfig(store_url, settings.artifacts, str(settings.noise_dir)))
    genome = Genome.from_json(chosen.genome)
    try:
        weights = worker.materializer(spec.noise.model_dump(mode="json")).build(genome)
    except ArtifactError as exc:
        raise BadInput(f"{exc}; checkpoints are read from {settings.artifacts} (EVOARENA_ARTIFACTS): "
                       "point it at the run's artifact store") from None
    return genome.arch, weights.flat


def write(path: str | Path, arch: dict, flat: torch.Tensor, metadata: dict[str, str]) -> None:
    """`path` as a safetensors file: the state dict of `(arch, flat)`, the architecture in its metadata."""
    from safetensors.torch import save_file

    from . import nets

    tensors = {k: v.detach().cpu().clone() for k, v in nets.layout(arch).views(flat).items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": FORMAT, "arch": json.dumps(arch), **metadata})


def load(path: str | Path):
    """(the torch module, the file's metadata) of an exported network: the README's lines."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from . import nets

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    net = nets.build(json.loads(metadata["arch"]))
    net.load_state_dict(load_file(str(path)))
    return net, metadata


# --- the command --------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    """`evoarena export NAME [--genome ID] --out FILE [--store URL]`."""
    parser = subparsers.add_parser("export", help="write a run's best network (or one genome) as safetensors")
    parser.add_argument("name", help="experiment name (the `name:` in its file)")
    parser.add_argument("--genome", help="a genome id (or an arena member id) instead of the best network")
    parser.add_argument("--out", required=True, help="the .safetensors file to write (the architecture is in its metadata)")
    parser.add_argument("--store", help="result store URL (default: $EVOARENA_STORE or sqlite:///runs/evoarena.db)")


@usage_errors
def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    store_url = args.store or settings.store
    store, _, spec = open_experiment(store_url, args.name)
    with store:
        chosen = choose(store, spec, args.genome)
    arch, flat = build(chosen, spec, store_url, settings)
    metadata = {"experiment": spec.name, "genome_id": chosen.genome["id"], "role": chosen.role, "source": chosen.source,
                "fitness": repr(chosen.fitness), **({"member": chosen.member} if chosen.member else {})}
    write(args.out, arch, flat, metadata)
    who = f"{chosen.role} {chosen.member} (genome {chosen.genome['id']})" if chosen.member else f"genome {chosen.genome['id']}"
    fitness = "" if chosen.fitness is None else f", fitness {chosen.fitness:.6g}"
    print(f"{spec.name}: {who} of {chosen.source}{fitness}, {flat.numel():,} parameters -> {args.out}")
    return 0
