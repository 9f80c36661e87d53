"""The GAN arena (seeds 000, 001, 004; Kucharavy et al., arXiv 2006.04720): players own
generators (pathogens) and discriminators (hosts), and only the fittest reproduce.

    founders: P players, each with G generators and D discriminators of the spec's architectures,
              each from its own init seed (plus `founder_mutations` architecture edits: standing variation)
    every round r:
        train-pair   a player's generator i trains with its discriminator i, `train_steps`
                     steps in chunks of at most `chunk_steps` (one step of the master per chunk)
        match        every generator against every discriminator, in blocks of generators;
                     Byzantine discriminators lie; each generator's quality is measured
        fitness      from the encounter matrix, over the encounters that count (speciation)
        cross-train  each generator against the foreign discriminator that caught it most,
                     each discriminator against the foreign generator that fooled it most
        select       per side, the `survivors` share by fitness (`low_performers` of them drawn
                     at random among the rest)
        reproduce    each player's pool refilled with offspring of survivors: crossover,
                     architecture and meta-parameter mutation; a child may join another player
    (the last round ends at its match and keeps its whole population: nothing is selected after it)

Each step's state is the population (members: a genome, meta-parameters, player, lineage) plus,
after a match, the encounter matrix and the fitness. Everything random is drawn from generators
seeded by (experiment seed, round, phase), so an interrupted step is planned again identically.
The store gets, per round, every generator in `pure_gen`, every discriminator in `pure_disc`,
each pointing to its encounters in `pure_match_trace` (the seed project's collections).
"""

from __future__ import annotations

import math

import numpy as np

from evoarena.encoding import arch as archs
from evoarena.encoding.genome import Genome, founder, morph
from evoarena.encoding.nets import layout
from evoarena.evolve import DOCUMENTS, ELO_START, Step, fitness, torus
from evoarena.evolve.population import (
    _carried,
    _digest,
    _mean_of,
    _pick,
    _score,
    byzantine,
    matrix_summary,
    mutate_meta,
    population_stats,
    quality_text,
    round_robin_pairs,
    sample_shape,
    select,
    side,
    torus_pairs,
    toughest_opponents,
    trained_members,
    training_pairs,
)
from evoarena.problems import embedding
from evoarena.spec.experiment import ExperimentSpec
from evoarena.tasks import envelope

SIDES = ("gen", "disc")


class Arena:
    """The arena as the master's algorithm: a round is `len(self.phases)` steps."""

    def __init__(self, spec: ExperimentSpec):
        self.spec, self.arena = spec, spec.arena
        self.problem = spec.problem.model_dump(mode="json")
        self.shape = sample_shape(self.problem["data"])
        self.chunks = [min(spec.arena.chunk_steps, spec.arena.train_steps - start)
                       for start in range(0, spec.arena.train_steps, spec.arena.chunk_steps)]
        self.phases = ["train"] * len(self.chunks) + ["match"] + (["cross"] if spec.arena.cross_train_steps else [])
        # the last round ends at its match: nothing is selected after it, so cross-training would
        # only move the final generators away from the ones that were matched and measured
        self.steps = spec.arena.rounds * len(self.phases) - (self.phases[-1] == "cross")
        self.grid = torus.shape(spec.arena.players, spec.arena.torus) if spec.arena.topology == "torus" else None

    def where(self, index: int) -> tuple[int, int, str]:
        """(round, phase index, phase name) of step `index`."""
        round, phase = divmod(index, len(self.phases))
        return round, phase, self.phases[phase]

    # --- the algorithm ------------------------------------------------------------------------

    def plan(self, index: int, state: dict | None) -> Step:
        round, phase, name = self.where(index)
        members = self.founders() if state is None else state["members"]
        alive = [m for m in members if not m.get("failed")]
        if name == "train":
            pairs = self.pairs(alive, round)
            return Step("train_pair", [self._train_task(index, round, g, d, self.chunks[phase]) for g, d in pairs], pairs)
        if name == "match":
            gens, discs = side(alive, "gen"), side(alive, "disc")
            liars = byzantine(len(discs), self.arena.byzantine, self._rng(round, "byzantine"))
            blocks = [gens[i : i + self.arena.match_block] for i in range(0, len(gens), self.arena.match_block)]
            return Step("match", [self._match_task(index, round, block, discs, liars) for block in blocks],
                        {"gens": gens, "discs": discs, "liars": liars})
        opponents = toughest_opponents(state)
        tasks = [self._cross_task(index, round, m, opp) for m, opp in opponents]
        return Step("cross_train", tasks, opponents)

    def pairs(self, members: list[dict], round: int) -> list[tuple[dict, dict]]:
        """Round `round`'s training pairs (generator, discriminator), by the arena's topology."""
        if self.arena.topology == "torus":
            return torus_pairs(members, round, self.grid)
        if self.arena.topology == "round_robin":
            return round_robin_pairs(members, round, self.arena.players)
        return training_pairs(members)

    def advance(self, index: int, state: dict | None, step: Step, results: list[dict]) -> dict:
        round, phase, name = self.where(index)
        members = [dict(m) for m in (self.founders() if state is None else state["members"])]
        failed = self._failures(index, results)
        if name == "train":
            members = trained_members(members, results, failed)
            doc = {"members": members, "train": _mean_of([r["last"] for r in results if not r.get("error")])}
        elif name == "match":
            doc = self._after_match(round, members, step, results)
        else:
            members = trained_members(members, results, failed)
            doc = {**{k: state[k] for k in ("matrix", "stats")}, "members": members,
                   "cross": _mean_of([r["last"] for r in results if not r.get("error")])}
        if phase == len(self.phases) - 1 and round + 1 < self.arena.rounds:
            doc["members"] = self.reproduce(round, doc["members"])
        return {"round": round, "phase": name, **doc}

    def line(self, index: int, state: dict) -> str:
        round, phase, name = self.where(index)
        head = f"round {round + 1:>3}/{self.arena.rounds} {name:<5}"
        if name == "train":
            t = state["train"]
            return f"{head} chunk {phase + 1}/{len(self.chunks)}  " + "  ".join(f"{k} {v:.3f}" for k, v in sorted(t.items()))
        if name == "cross":
            return f"{head} " + "  ".join(f"{k} {v:.3f}" for k, v in sorted(state["cross"].items()))
        s, m = state["stats"], state["matrix"]
        mix = state.get("mixture")
        mixed = (f"  mixture of {sum(w > 0 for w in mix['weights'])} mmd {mix['mmd2']:.2e} (uniform {mix['uniform_mmd2']:.2e})"
                 if mix else "")
        return (f"{head} best gen fitness {s['best']:.3f} {quality_text(s['best_quality'])} "
                f"steps {s.get('best_steps', 0):,}{mixed}  "
                f"matrix mean {m['mean']:.2f} [{m['min']:.2f}, {m['max']:.2f}]  real accepted {m['real_accept']:.2f}")

    # --- population ---------------------------------------------------------------------------

    def founders(self) -> list[dict]:
        """Round 0's population: every player's pools, each member from its own init seed."""
        rng = self._rng(0, "founders")
        members = []
        for player in range(self.arena.players):
            for side_name in SIDES:
                for slot in range(self.arena.pool(0, side_name)):
                    genome = founder(self.founding_arch(side_name), int(rng.integers(2**31 - 1)))
                    for _ in range(self.arena.variation.founder_mutations):
                        if (edit := archs.sample_mutation(rng, genome.arch, self.output(side_name))) is not None:
                            genome = morph(genome, edit)
                    member_id = f"{side_name}-{_digest('founder', self.spec.seed, player, slot, side_name)}"
                    members.append({"id": member_id, "side": side_name, "player": player, "genome": genome.to_json(),
                                    "meta": self.founding_meta(side_name), "lineage": member_id, "parents": [], "born": 0,
                                    "steps": 0})
        return members

    def founding_arch(self, side_name: str) -> dict:
        net = self.arena.generator if side_name == "gen" else self.arena.discriminator
        images = len(self.shape) > 1
        if side_name == "gen":
            out_act = "tanh" if images else None
            if net.family == "conv":
                return archs.conv_generator_arch(self.problem["latent"], net.channels, self.shape, out_act=out_act)
            return archs.generator_arch(self.problem["latent"], net.hidden, self.shape, out_act=out_act)
        if net.family == "conv":
            return archs.conv_discriminator_arch(self.shape, net.channels)
        return archs.discriminator_arch(self.shape, net.hidden)

    def founding_meta(self, side_name: str) -> dict:
        meta = self.arena.meta.model_dump(mode="json")
        return meta if side_name == "gen" else {k: v for k, v in meta.items() if k != "loss"}

    def output(self, side_name: str) -> tuple:
        """The output shape every architecture of a side must keep."""
        return tuple(self.shape) if side_name == "gen" else (1,)

    def reproduce(self, round: int, members: list[dict]) -> list[dict]:
        """Selection, then each player's pools refilled with offspring of the survivors."""
        if self.grid is not None:
            return self.reproduce_on_torus(round, members)
        rng, nxt = self._rng(round, "reproduce"), []
        for side_name in SIDES:
            pool = self.arena.pool(round + 1, side_name)
            if self.arena.selection == "player":  # each player's lineages compete among themselves only
                survivors = [m for player in range(self.arena.players)
                             for m in select([m for m in side(members, side_name) if m["player"] == player],
                                             self.arena, pool, rng)]
            else:
                survivors = select(side(members, side_name), self.arena, self.arena.players * pool, rng)
            for player in range(self.arena.players):
                own = [m for m in survivors if m["player"] == player][:pool]
                nxt += [{k: v for k, v in m.items() if k not in ("fitness", "quality", "partner")} for m in own]
                for slot in range(pool - len(own)):
                    nxt.append(self.child(rng, round, player, slot, side_name, own, survivors))
        return nxt

    def reproduce_on_torus(self, round: int, members: list[dict]) -> list[dict]:
        """Each cell's member replaced by an offspring of its neighbourhood's fittest when that one is
        strictly fitter (evolve/torus.py); with `survivors: 1` nothing is replaced (selection off)."""
        rng, nxt = self._rng(round, "reproduce"), []
        for side_name in SIDES:
            cells = {m["player"]: m for m in side(members, side_name)}
            moves = torus.replacements({c: _score(m) for c, m in cells.items()}, *self.grid)
            for cell in sorted(cells):
                if cell in moves and self.arena.survivors < 1:
                    mates = [cells[n] for n in torus.neighbourhood(cell, *self.grid) if n in cells]
                    nxt.append(self.offspring(rng, round, cell, 0, side_name, cells[moves[cell]], mates))
                else:
                    nxt.append({k: v for k, v in cells[cell].items() if k not in ("fitness", "quality", "partner")})
        return nxt

    def child(self, rng: np.random.Generator, round: int, player: int, slot: int, side_name: str,
              own: list[dict], survivors: list[dict]) -> dict:
        """One offspring for `player`: parent from its own survivors unless it migrates (or has none)."""
        v = self.arena.variation
        others = [m for m in survivors if m["player"] != player]
        migrate = (rng.random() < v.migration and others) or not own
        parent = _pick(rng, others if migrate and others else own or survivors)
        return self.offspring(rng, round, player, slot, side_name, parent, survivors)

    def offspring(self, rng: np.random.Generator, round: int, player: int, slot: int, side_name: str,
                  parent: dict, survivors: list[dict]) -> dict:
        """`parent`'s child for `player`: its trained weights, maybe crossed with a mate among
        `survivors`, maybe mutated (architecture, meta-parameters)."""
        v = self.arena.variation
        genome, parents = Genome.from_json(parent["genome"]), [parent["id"]]
        if rng.random() < v.crossover_rate:
            mates = [m for m in survivors if m["id"] != parent["id"]
                     and (v.mixing == "between" or m["player"] == parent["player"])]
            if mates:
                mate = _pick(rng, mates)
                edit = archs.sample_crossover(rng, genome.arch, mate["genome"]["arch"], self.output(side_name))
                if edit is not None:
                    genome = morph(genome, edit, other=Genome.from_json(mate["genome"]))
                    parents.append(mate["id"])
        if rng.random() < v.arch_rate:
            edit = archs.sample_mutation(rng, genome.arch, self.output(side_name), large=v.large)
            if edit is not None:
                genome = morph(genome, edit)
        meta = mutate_meta(rng, parent["meta"]) if rng.random() < v.meta_rate else dict(parent["meta"])
        member_id = f"{side_name}-{_digest('child', self.spec.seed, round, player, slot, *parents)}"
        return {"id": member_id, "side": side_name, "player": player, "genome": genome.to_json(), "meta": meta,
                "lineage": parent["lineage"], "parents": parents, "born": round + 1, "elo": parent.get("elo"),
                "steps": parent.get("steps", 0)}

    # --- after a match: fitness, and the seed project's collections ---------------------------

    def _after_match(self, round: int, members: list[dict], step: Step, results: list[dict]) -> dict:
        gens, discs, liars = step.about["gens"], step.about["discs"], step.about["liars"]
        ok = [r for r in results if not r.get("error")]
        rows = {g: row for r in ok for g, row in zip(r["gens"], r["matrix"])}
        quality = {g: q for r in ok for g, q in zip(r["gens"], r["quality"])}
        gens = [g for g in gens if g["id"] in rows]  # a failed block's generators get no fitness (on_error: skip)
        matrix = [rows[g["id"]] for g in gens]
        real_accept = ok[0]["real_accept"] if ok else [math.nan] * len(discs)
        disc_index = {d["id"]: j for j, d in enumerate(discs)}
        if self.grid is None:
            judged = fitness.judged_mask([g["player"] for g in gens], [d["player"] for d in discs], self.arena.speciation,
                                         [disc_index.get(g.get("partner")) for g in gens])
        else:
            judged = torus.judged([g["player"] for g in gens], [d["player"] for d in discs], *self.grid)
        previous = ([g.get("elo") or ELO_START for g in gens], [d.get("elo") or ELO_START for d in discs])
        gen_fit, disc_fit = self.fitness(matrix, real_accept, judged, previous) if gens else ([], [])
        embedded = {g: mu for r in ok for g, mu in zip(r["gens"], r.get("embeddings", []))}
        real = next((r["real_embedding"] for r in ok if "real_embedding" in r), None)
        fidelity = {g: pr for r in ok for g, pr in zip(r["gens"], r.get("fidelity", []))}
        if self.arena.fitness.generators == "mmd":  # closeness to the training data, not fooling rate
            gen_fit = [-embedding.mmd2(embedded[g["id"]], real) if g["id"] in embedded else math.nan for g in gens]
        elif self.arena.fitness.generators == "precision_recall":
            gen_fit = [(fidelity[g["id"]]["precision"] + fidelity[g["id"]]["recall"]) / 2 if g["id"] in fidelity
                       else math.nan for g in gens]
        f = self.arena.fitness
        scores = {g["id"]: x for g, x in zip(gens, gen_fit)} | {d["id"]: x for d, x in zip(discs, disc_fit)}
        for m in members:
            m["fitness"] = scores.get(m["id"])
            if m["side"] == "gen":
                m["quality"] = quality.get(m["id"])
            if f.kind == "elo" and m["id"] in scores:
                m["elo"] = scores[m["id"]]
        encounters = {"gens": [g["id"] for g in gens], "discs": [d["id"] for d in discs], "matrix": matrix,
                      "real_accept": real_accept, "judged": judged, "liars": liars}
        doc = {"members": members, "matrix": matrix_summary(encounters), "stats": population_stats(members),
               DOCUMENTS: self.documents(round, members, encounters)}
        if real is not None and gens and all(g["id"] in embedded for g in gens):
            doc["mixture"] = self.mixture(round, gens, [embedded[g["id"]] for g in gens], real)
        return doc

    def mixture(self, round: int, gens: list[dict], mus: list[list[float]], real: list[float]) -> dict:
        """The arena's output as a mixture of its generators (Lipizzaner): weights evolved by a (1+1)-ES
        to bring the mixture's kernel embedding closest to the training data's (problems/embedding.py)."""
        weights, mmd2 = embedding.evolve_weights(mus, real, self._rng(round, "mixture"))
        uniform = embedding.mixture_mmd2([1 / len(mus)] * len(mus), mus, real)
        steps = sum(w * g.get("steps", 0) for w, g in zip(weights, gens))
        return {"members": [g["id"] for g in gens], "genomes": [g["genome"] for g in gens], "weights": weights,
                "mmd2": mmd2, "uniform_mmd2": uniform, "lineage_steps": steps}

    def fitness(self, matrix, real_accept, judged, previous) -> tuple[list[float], list[float]]:
        """(generator, discriminator) fitness from an encounter matrix, by the spec's fitness kind;
        `previous` are the Elo ratings before it (used by elo only)."""
        f = self.arena.fitness
        params = {"seed001": {"rac_weight": f.rac_weight, "target": f.target},
                  "host_pathogen": {"autoimmunity": f.autoimmunity, "virulence": f.virulence},
                  "elo": {"k": f.elo_k}}[f.kind]
        return fitness.score(f.kind, matrix, real_accept, judged, params, previous)

    def documents(self, round: int, members: list[dict], enc: dict) -> dict[str, list[dict]]:
        """The round's documents for the scheduler to store (evolve.DOCUMENTS): pure_gen / pure_disc,
        each member of the round; pure_match_trace, its encounters."""
        name = self.spec.name
        traces, docs = [], {"pure_gen": [], "pure_disc": []}
        for m in members:
            if m.get("failed"):
                continue
            trace_id = f"{name}:{round:06d}:{m['id']}:encounters"
            if m["side"] == "gen" and m["id"] in enc["gens"]:
                i = enc["gens"].index(m["id"])
                seen = {d: enc["matrix"][i][j] for j, d in enumerate(enc["discs"]) if enc["judged"][i][j]}
            elif m["side"] == "disc":
                j = enc["discs"].index(m["id"])
                seen = {g: enc["matrix"][i][j] for i, g in enumerate(enc["gens"]) if enc["judged"][i][j]}
            else:
                seen = {}
            traces.append({"_id": trace_id, "experiment": name, "round": round, "member": m["id"],
                           "side": m["side"], "encounters": seen, "liar": m["side"] == "disc"
                           and enc["discs"].index(m["id"]) in enc["liars"]})
            genome = Genome.from_json(m["genome"])
            docs["pure_gen" if m["side"] == "gen" else "pure_disc"].append({
                "_id": f"{name}:{round:06d}:{m['id']}", "experiment": name, "round": round, "member": m["id"],
                "player": m["player"], "lineage": m["lineage"], "parents": m["parents"], "born": m["born"],
                "genome_id": genome.id, "genome": m["genome"], "hyper_parameters": m["meta"],
                "parameters": layout(genome.arch).size, "fitness_map": {self.arena.fitness.kind: m.get("fitness")},
                "steps": m.get("steps", 0),
                "quality": m.get("quality"), "encounter_trace": trace_id,
            })
        traces.append({"_id": f"{name}:{round:06d}:matrix", "experiment": name, "round": round, **enc})
        return {"pure_match_trace": traces, **docs}

    # --- tasks --------------------------------------------------------------------------------

    def _base(self, index: int, round: int, key: list[str], genomes: list[dict]) -> dict:
        return envelope(self.spec, index, round=round, key=key, genomes=genomes, batch_size=self.arena.batch_size,
                        seed=int(_digest("task", self.spec.seed, index, *key), 16) % 2**31)

    def _train_task(self, index: int, round: int, g: dict, d: dict, steps: int) -> dict:
        return {**self._base(index, round, [g["id"], d["id"]], [g["genome"], d["genome"]]),
                "gen": _carried(g), "disc": _carried(d), "steps": steps}

    def _match_task(self, index: int, round: int, block: list[dict], discs: list[dict], liars: list[int]) -> dict:
        return {**self._base(index, round, [g["id"] for g in block], [m["genome"] for m in block + discs]),
                "gens": [_carried(g) for g in block], "discs": [_carried(d) for d in discs], "liars": liars,
                "samples": self.arena.match_samples, "metrics": True, "metric_samples": self.problem["metric_samples"],
                **({"fidelity": True} if self.arena.fitness.generators == "precision_recall" else {})}

    def _cross_task(self, index: int, round: int, member: dict, opponent: dict) -> dict:
        return {**self._base(index, round, [member["id"], opponent["id"]], [member["genome"], opponent["genome"]]),
                "side": member["side"], "member": _carried(member), "opponent": _carried(opponent),
                "steps": self.arena.cross_train_steps}

    def _failures(self, index: int, results: list[dict]) -> set[str]:
        """Ids of the members whose task failed; on_error = stop ends the run at the first."""
        bad = [r for r in results if r.get("error")]
        if bad and self.arena.on_error == "stop":
            raise RuntimeError(f"step {index}: task {bad[0]['_id']} failed ({bad[0]['error']}); "
                               "stopping because arena.on_error = stop")
        return {member for r in bad for member in r.get("key") or []}

    def _rng(self, round: int, purpose: str) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, round, int(_digest(purpose), 16) % 2**32])
