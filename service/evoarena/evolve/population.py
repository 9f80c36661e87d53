"""The arena's steps as functions of its population: who trains with whom, what training changed,
who meets whom in cross-training, who survives, how meta-parameters mutate, and the summaries the
progress line and the store keep. evolve/arena.py (the algorithm) calls them; evolve/fight.py (the
asynchronous fight) shares them. A member is a plain dict (docs/ARCHITECTURE.md, "The GAN arena")."""

from __future__ import annotations

import math
import statistics

import numpy as np

from evoarena.evolve import ranked_value, torus
from evoarena.seeding import digest
from evoarena.spec.experiment import ArenaSpec


def side(members: list[dict], side_name: str) -> list[dict]:
    return [m for m in members if m["side"] == side_name and not m.get("failed")]


def training_pairs(members: list[dict]) -> list[tuple[dict, dict]]:
    """Each player's generator i with its discriminator i (a player with more of one side trains
    only as many pairs as it has of the other; the rest wait for the match and cross-training)."""
    players = sorted({m["player"] for m in members})
    return [pair for p in players
            for pair in zip(side([m for m in members if m["player"] == p], "gen"),
                            side([m for m in members if m["player"] == p], "disc"))]


def torus_pairs(members: list[dict], round: int, grid: tuple[int, int]) -> list[tuple[dict, dict]]:
    """Each cell's generator with the discriminator of its round's partner cell (evolve/torus.py)."""
    discs = {m["player"]: m for m in side(members, "disc")}
    return [(g, discs[p]) for g in side(members, "gen") if (p := torus.partner(g["player"], round, *grid)) in discs]


def round_robin_pairs(members: list[dict], round: int, players: int) -> list[tuple[dict, dict]]:
    """GAN_evo's round robin: player i's generator with player (i + round) mod `players`' discriminator,
    so that `players` rounds pair every generator with every discriminator once."""
    discs = {m["player"]: m for m in side(members, "disc")}
    return [(g, discs[p]) for g in side(members, "gen") if (p := (g["player"] + round) % players) in discs]


def trained_members(members: list[dict], results: list[dict], failed: set[str]) -> list[dict]:
    """The population with each trained member's genome replaced by its trained one."""
    new, steps = {}, {}
    for r in results:
        if r.get("error"):
            continue
        for key in ("gen", "disc", "member"):
            if key in r:
                new[r[key]["id"]] = r[key]["genome"]
                steps[r[key]["id"]] = len(r["trace"])
        if "gen" in r:  # a training pair: who trained with whom, for the partner rule of the match
            new[("partner", r["gen"]["id"])] = r["disc"]["id"]
    out = []
    for m in members:
        m = {**m, "genome": new.get(m["id"], m["genome"])}
        if m["id"] in steps:  # the gradient steps this member's weights have had, along its lineage
            m["steps"] = m.get("steps", 0) + steps[m["id"]]
        if ("partner", m["id"]) in new:
            m["partner"] = new[("partner", m["id"])]
        if m["id"] in failed:
            m["failed"] = True
        out.append(m)
    return out


def toughest_opponents(state: dict) -> list[tuple[dict, dict]]:
    """Cross-training pairs: each generator with the judging discriminator that took the least of
    its samples for real, each discriminator with the judged generator that fooled it most."""
    members = {m["id"]: m for m in state["members"]}
    matrix, judged = state["matrix"]["values"], state["matrix"]["judged"]
    gen_ids, disc_ids = state["matrix"]["gens"], state["matrix"]["discs"]
    pairs = []
    for i, g in enumerate(gen_ids):
        judges = [j for j in range(len(disc_ids)) if judged[i][j]]
        if judges:
            pairs.append((members[g], members[disc_ids[min(judges, key=lambda j: (matrix[i][j], j))]]))
    for j, d in enumerate(disc_ids):
        victims = [i for i in range(len(gen_ids)) if judged[i][j]]
        if victims:
            pairs.append((members[d], members[gen_ids[max(victims, key=lambda i: (matrix[i][j], -i))]]))
    return pairs


def select(members: list[dict], arena: ArenaSpec, capacity: int, rng: np.random.Generator) -> list[dict]:
    """Truncation by fitness (failed or unjudged members last; ties by id), `low_performers` of the
    survivors drawn at random among the rest (seed 000's tolerance to low performers)."""
    ranked = sorted(members, key=lambda m: (-_score(m), m["id"]))
    keep = min(capacity, max(1, round(arena.survivors * len(ranked))))
    low = min(arena.low_performers, keep - 1, len(ranked) - keep)
    best, rest = ranked[: keep - low], ranked[keep - low :]
    lucky = [rest[i] for i in sorted(rng.choice(len(rest), size=low, replace=False))] if low > 0 else []
    return best + lucky


def byzantine(n_discs: int, share: float, rng: np.random.Generator) -> list[int]:
    """Indices of the discriminators that lie in this round's match."""
    count = int(round(share * n_discs))
    return sorted(int(i) for i in rng.choice(n_discs, size=count, replace=False)) if count else []


def mutate_meta(rng: np.random.Generator, meta: dict) -> dict:
    """One meta-parameter changed: the optimizer, the learning rate (x e^N(0, 0.5)), or the
    generator loss (E-GAN's variation operators)."""
    meta = dict(meta)
    fields = ["optimizer", "lr"] + (["loss"] if "loss" in meta else [])
    what = fields[int(rng.integers(len(fields)))]
    if what == "lr":
        meta["lr"] = float(min(1.0, max(1e-6, meta["lr"] * math.exp(rng.normal(0, 0.5)))))
    else:
        choices = [c for c in {"optimizer": ("adam", "sgd", "rmsprop"), "loss": ("ns", "ls", "hinge")}[what]
                   if c != meta[what]]
        meta[what] = choices[int(rng.integers(len(choices)))]
    return meta


def matrix_summary(enc: dict) -> dict:
    """The encounter matrix (kept whole, with who is who) and the numbers the progress line shows."""
    matrix, judged = enc["matrix"], enc["judged"]
    counted = [matrix[i][j] for i in range(len(matrix)) for j in range(len(matrix[i])) if judged[i][j]]
    finite = [x for x in enc["real_accept"] if not math.isnan(x)]
    return {"values": matrix, "judged": judged, "gens": enc["gens"], "discs": enc["discs"],
            "real_accept_each": enc["real_accept"], "liars": enc["liars"],
            "mean": statistics.fmean(counted) if counted else math.nan,
            "min": min(counted, default=math.nan), "max": max(counted, default=math.nan),
            "real_accept": statistics.fmean(finite) if finite else math.nan}


def population_stats(members: list[dict]) -> dict:
    """Best and mean generator fitness, and the best generator's quality."""
    gens = [m for m in side(members, "gen") if _score(m) > -math.inf]
    if not gens:
        return {"best": math.nan, "mean": math.nan, "best_quality": {}, "best_member": None, "errors": 0}
    best = min(gens, key=lambda m: (-m["fitness"], m["id"]))
    return {"best": best["fitness"], "mean": statistics.fmean(m["fitness"] for m in gens),
            "best_quality": best.get("quality") or {}, "best_member": best["id"], "best_steps": best.get("steps", 0),
            "errors": sum(1 for m in members if m.get("failed"))}


def quality_text(q: dict) -> str:
    if "modes_covered@20" in q:
        return (f"modes {q['modes_covered']}/{q['modes']} @20 {q['modes_covered@20']} hq {q['high_quality']:.2f} "
                f"rkl {q['reverse_kl']:.2f}")
    if "modes_covered" in q:  # a run stored before both counts were kept: its count is the >= 20 one
        return f"modes@20 {q['modes_covered']}/{q['modes']} hq {q['high_quality']:.2f} rkl {q['reverse_kl']:.2f}"
    if "frechet" in q:
        return f"FD {q['frechet']:.1f} classes {q['classes_covered']} tv {q['class_tv']:.2f}"
    return ""


def sample_shape(data: dict) -> tuple[int, ...]:
    """One real sample's shape, known without loading the data (but for a user's npz file)."""
    if data["kind"] in ("ring", "grid"):
        return (2,)
    if data["kind"] == "digits":
        return (1, 8, 8)
    if data["kind"] == "mnist":
        return (1, data["size"], data["size"])
    from ..problems.gan_data import make_data

    return tuple(make_data(data).shape)


def _carried(m: dict) -> dict:
    """What a task carries of a member: its id, genome, meta-parameters, and whose it is."""
    return {k: m[k] for k in ("id", "genome", "meta", "player", "lineage")}


def _score(m: dict) -> float:
    return -math.inf if m.get("failed") else ranked_value(m.get("fitness"))


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _mean_of(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r})
    return {k: statistics.fmean(r[k] for r in rows if k in r) for k in keys}


_digest = digest
