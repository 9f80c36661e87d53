"""`evoarena export NAME [--genome ID | --mixture] --out FILE`: a run's network, or its mixture of
generators, as a file anyone can load.

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
  or discriminator), `member` (arena), `fitness`, `source` (the generation or round it came from,
  counted from 1 as `evoarena run` prints it: "generation 5", "round 8 match").

Loading it takes the project's nets.py and safetensors (docs/USAGE.md, "Looking at a run"):

    with safe_open(path, "pt") as f:
        arch = json.loads(f.metadata()["arch"])
    net = nets.build(arch)
    net.load_state_dict(load_file(path))

`--mixture` (an arena run): the weighted mixture of generators of the last match (the state's
`mixture`: member ids and weights), as ONE safetensors file:
- tensors: every member whose weight is > 0, member i's state dict under `m{i}.` ("m0.0.weight",
  "m1.2.bias", ...), i the position among these kept members, in the mixture's order;
- metadata: `format` ("evoarena-mixture-1"), `archs` (JSON list of each member's architecture),
  `weights` (JSON list, renormalised to sum 1 over the kept members), `members` (member ids),
  `genome_ids`, `latent` (the input shape the members share), `experiment`, `source`, and the
  arena's `mmd2` / `uniform_mmd2` for this mixture and for uniform weights.
`load_mixture` reads it back with nets.py; `scripts/sample_mixture.py` needs only torch and
safetensors, and draws the samples `samples.mixture_samples` draws (the rule is written there).

The weights are built as a worker builds them: a worker.Worker on the run's store, artifact store
($EVOARENA_ARTIFACTS: where the arena's checkpoints are) and noise table, through its Materializer.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from evoarena.cli.status import BadInput, open_experiment, usage_errors

if TYPE_CHECKING:
    import torch

    from evoarena.settings import Settings
    from evoarena.spec.experiment import ExperimentSpec
    from evoarena.store import ResultStore

FORMAT = "evoarena-network-1"
MIXTURE_FORMAT = "evoarena-mixture-1"


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
    return Chosen(doc["genome"], "network", f"generation {last + 1}", fitness=doc["fitness"])


def _ga_genome(store: ResultStore, name: str, genome_id: str) -> Chosen:
    last = store.last_generation(name)
    for generation in range(0 if last is None else last + 1, -1, -1):  # newest first, a partial one too
        for doc in store.find_results(name, generation, "evaluate"):
            if doc.get("genome_id") == genome_id and not doc.get("error"):
                return Chosen(doc["genome"], "network", f"generation {generation + 1}", fitness=doc["fitness"])
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
    # counted from 1, as `run`, `status` and the report count (the stored indices are 0-based)
    source = f"fight {state.get('done', index + 1)}" if events else f"round {state['round'] + 1} match"
    return Chosen(member["genome"], "generator", source, best, member.get("fitness"))


@dataclass(frozen=True)
class Mixture:
    """A mixture of generators of a run: the members with weight > 0, weights renormalised over them."""

    members: list[Chosen]  # in the mixture's order
    weights: list[float]  # each > 0, summing to 1
    source: str  # "round 3 match"
    mmd2: float | None = None  # the arena's MMD^2 to real data, of this mixture and with uniform weights
    uniform_mmd2: float | None = None


def choose_mixture(store: ResultStore, spec: ExperimentSpec) -> Mixture:
    """The mixture of the newest state that ranked the generators (BadInput if it has none)."""
    if spec.algorithm != "arena":
        raise BadInput(f"experiment {spec.name!r} is a {spec.algorithm} run; only an arena run has a mixture of generators")
    for index, state in _arena_states(store, spec.name):
        if (best := best_generator_of(spec, index, state)) is not None:
            return mixture_of(spec, best.source, state)
    raise BadInput(f"experiment {spec.name!r} has no match yet: no mixture of generators to export")


def mixture_of(spec: ExperimentSpec, source: str, state: dict) -> Mixture:
    """The mixture stored in arena state `state` (named `source`), without its members of weight 0."""
    mixture = state.get("mixture")
    if mixture is None:
        raise BadInput(f"experiment {spec.name!r}: its {source} stored no mixture of generators (a run from before "
                       "evoarena kept one); leave out --mixture for its best generator")
    # the genomes the match measured: where reproduction followed the match in the same step, the
    # state's own members are already the next round's
    kept = [(mid, genome, w) for mid, genome, w in zip(mixture["members"], mixture["genomes"], mixture["weights"]) if w > 0]
    if not kept:
        raise BadInput(f"experiment {spec.name!r}: every weight of the {source}'s mixture is 0: {mixture['weights']}")
    total = sum(w for *_, w in kept)
    chosen = [Chosen(genome, "generator", source, mid) for mid, genome, _ in kept]
    return Mixture(chosen, [w / total for *_, w in kept], source, mixture.get("mmd2"), mixture.get("uniform_mmd2"))


def _arena_genome(store: ResultStore, spec: ExperimentSpec, wanted: str) -> Chosen:
    role = {"gen": "generator", "disc": "discriminator"}
    index, newest = next(_arena_states(store, spec.name), (None, None))  # the newest population first
    for m in newest["members"] if newest else ():
        if wanted in (m["id"], m["genome"]["id"]):
            return Chosen(m["genome"], role[m["side"]], f"step {index + 1}", m["id"], m.get("fitness"))
    for collection, side in (("pure_gen", "gen"), ("pure_disc", "disc")):
        found = store.find_docs(collection, spec.name, member=wanted) or store.find_docs(collection, spec.name,
                                                                                          genome_id=wanted)
        if found:
            doc = max(found, key=lambda d: d["round"])
            fitness = doc["fitness_map"].get(spec.arena.fitness.kind)
            return Chosen(doc["genome"], role[side], f"round {doc['round'] + 1} match", doc["member"], fitness)
    raise BadInput(f"no member or genome {wanted!r} in experiment {spec.name!r} (looked in its newest population, "
                   "pure_gen and pure_disc)")


def build(chosen: Chosen, spec: ExperimentSpec, store_url: str, settings: Settings) -> tuple[dict, torch.Tensor]:
    """(architecture, flat weights) of the chosen genome, built by a Worker as in a run."""
    return build_all([chosen], spec, store_url, settings)[0]


def build_all(chosen: list[Chosen], spec: ExperimentSpec, store_url: str, settings: Settings) -> list[tuple[dict, torch.Tensor]]:
    """(architecture, flat weights) of each chosen genome, built by one Worker's Materializer as in a run."""
    from evoarena.encoding.genome import Genome
    from evoarena.store import ArtifactError
    from evoarena.worker.worker import Worker, WorkerConfig

    worker = Worker(WorkerConfig(store_url, settings.artifacts, str(settings.noise_dir)))
    materializer = worker.materializer(spec.noise.model_dump(mode="json"))
    built = []
    for c in chosen:
        genome = Genome.from_json(c.genome)
        try:
            built.append((genome.arch, materializer.build(genome).flat))
        except ArtifactError as exc:
            raise BadInput(f"{exc}; checkpoints are read from {settings.artifacts} (EVOARENA_ARTIFACTS): "
                           "point it at the run's artifact store") from None
    return built


def write(path: str | Path, arch: dict, flat: torch.Tensor, metadata: dict[str, str]) -> None:
    """`path` as a safetensors file: the state dict of `(arch, flat)`, the architecture in its metadata."""
    _save(path, _state_dict(arch, flat), {"format": FORMAT, "arch": json.dumps(arch), **metadata})


def write_mixture(path: str | Path, members: list[tuple[dict, torch.Tensor]], weights: list[float],
                  metadata: dict[str, str]) -> None:
    """`path` as one safetensors file of mixture members `(arch, flat)`: member i's state dict under `m{i}.`,
    the architectures, weights and shared input shape in its metadata."""
    tensors = {f"m{i}.{k}": v for i, (arch, flat) in enumerate(members) for k, v in _state_dict(arch, flat).items()}
    archs = [arch for arch, _ in members]
    _save(path, tensors, {"format": MIXTURE_FORMAT, "archs": json.dumps(archs), "weights": json.dumps(weights),
                          "latent": json.dumps(archs[0]["input"]), **metadata})


def _state_dict(arch: dict, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    from evoarena.encoding import nets

    return {k: v.detach().cpu().clone() for k, v in nets.layout(arch).views(flat).items()}


def _save(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load(path: str | Path):
    """(the torch module, the file's metadata) of an exported network: docs/USAGE.md's lines."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from evoarena.encoding import nets

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    net = nets.build(json.loads(metadata["arch"]))
    net.load_state_dict(load_file(str(path)))
    return net, metadata


def load_mixture(path: str | Path):
    """(the members as torch modules, their weights, the file's metadata) of an exported mixture."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from evoarena.encoding import nets

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    modules = []
    for i, arch in enumerate(json.loads(metadata["archs"])):
        net = nets.build(arch)
        prefix = f"m{i}."
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        modules.append(net)
    return modules, json.loads(metadata["weights"]), metadata


# --- the command --------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    """`evoarena export NAME [--genome ID | --mixture] --out FILE [--store URL]`."""
    parser = subparsers.add_parser("export", help="a run's best network, a genome or its mixture as safetensors")
    parser.add_argument("name", help="experiment name (the `name:` in its file)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--genome", help="a genome id (or an arena member id) instead of the best network")
    which.add_argument("--mixture", action="store_true",
                       help="an arena's mixture of generators of the last match (members of weight > 0), in one file")
    parser.add_argument("--out", required=True, help="the .safetensors file to write (the architecture is in its metadata)")
    parser.add_argument("--store", help="result store URL (default: $EVOARENA_STORE or sqlite:///runs/evoarena.db)")


@usage_errors
def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    store_url = args.store or settings.store
    store, _, spec = open_experiment(store_url, args.name)
    if args.mixture:
        with store:
            mixture = choose_mixture(store, spec)
        return _export_mixture(mixture, spec, store_url, settings, args.out)
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


def _export_mixture(mixture: Mixture, spec: ExperimentSpec, store_url: str, settings: Settings, out: str) -> int:
    members = build_all(mixture.members, spec, store_url, settings)
    metadata = {"experiment": spec.name, "source": mixture.source,
                "members": json.dumps([c.member for c in mixture.members]),
                "genome_ids": json.dumps([c.genome["id"] for c in mixture.members]),
                "mmd2": repr(mixture.mmd2), "uniform_mmd2": repr(mixture.uniform_mmd2)}
    write_mixture(out, members, mixture.weights, metadata)
    weights = ", ".join(f"{c.member} {w:.3f}" for c, w in zip(mixture.members, mixture.weights))
    size = sum(flat.numel() for _, flat in members)
    print(f"{spec.name}: mixture of {len(members)} generators of {mixture.source} ({weights}), {size:,} parameters -> {out}")
    return 0
