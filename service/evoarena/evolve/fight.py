"""The arena's asynchronous fight (seed 001): no barrier between rounds, so a slow worker never
holds the others back.

    founders: as in the arena (evolve/arena.py); each player's generator i and discriminator i
              form a pair, and every pair is sent to fight at once
    when a pair's fight ends (its task trained it for `chunk_steps` steps, then matched it
    against every foreign generator and discriminator as they were when the fight was sent):
        fitness      of everyone in that small encounter matrix, by the arena's fitness kind
        inherit      if a foreign generator scored better than the pair's generator, the pair's
                     generator is replaced by a child of it (crossover with the old one, mutation,
                     as in the arena); the same for the discriminator
        fight again  the pair (or its heirs) is sent at once, until every pair has fought its
                     share: rounds * train_steps / chunk_steps fights each (the same gradient
                     steps as the rounds of the synchronous arena, with no cross-training)

Each result changes the state once (one stored event); the state holds the tasks in flight, so a
restarted master sends only those whose results are not stored yet. Which pair finishes first
depends on the workers, so two runs can differ; each event, given its state and its result, is
deterministic.
"""

from __future__ import annotations

import math

from evoarena.evolve import DOCUMENTS, ELO_START, fitness, ranked_value
from evoarena.evolve.arena import Arena
from evoarena.evolve.population import _carried, byzantine, population_stats, quality_text, side, training_pairs
from evoarena.tasks import task_id


class Fight(Arena):
    """The asynchronous fight as an event-driven algorithm of the master (evolve/__init__.py)."""

    op = "train_pair"

    def __init__(self, spec):
        super().__init__(spec)
        if not self.chunks:
            raise ValueError("arena.mode = async needs arena.train_steps >= 1: a fight trains, then matches")
        self.steps = None  # events, not steps: the run ends when nothing is in flight
        self.fight_steps = self.chunks[0]
        self.fights_per_pair = math.ceil(spec.arena.rounds * spec.arena.train_steps / self.fight_steps)

    # --- the algorithm --------------------------------------------------------------------------

    def start(self) -> dict:
        members = self.founders()
        pairs = training_pairs(members)
        state = {"members": members, "inflight": [], "sent": 0, "done": 0,
                 "budget": self.fights_per_pair * len(pairs), "last": None, "stats": population_stats(members)}
        for g, d in pairs:
            state = self._send(state, g["id"], d["id"])
        return state

    def react(self, state: dict, task: dict, result: dict) -> dict:
        n = task["generation"]
        done_id = task_id(self.op, task)
        state = {**state, "inflight": [t for t in state["inflight"] if task_id(self.op, t) != done_id],
                 "done": state["done"] + 1, "members": [dict(m) for m in state["members"]]}
        members = {m["id"]: m for m in state["members"]}
        g, d = members[task["gen"]["id"]], members[task["disc"]["id"]]
        if result.get("error"):
            if self.arena.on_error == "stop":
                raise RuntimeError(f"fight {n}: task {done_id} failed ({result['error']}); "
                                   "stopping because arena.on_error = stop")
            g["failed"] = d["failed"] = True  # skip: this pair fights no more
            return {**state, "last": {"fight": n, "error": result["error"]}, "stats": population_stats(state["members"])}

        g["genome"], d["genome"] = result["gen"]["genome"], result["disc"]["genome"]
        enc, gen_fit, disc_fit = self._score(task, result, members)
        for m, x in [*zip(enc["gens"], gen_fit), *zip(enc["discs"], disc_fit)]:
            if m in (g["id"], d["id"]):
                members[m]["fitness"] = x
                if self.arena.fitness.kind == "elo":
                    members[m]["elo"] = x
        g["quality"] = result["match"]["quality"][0]
        documents = self.documents(n, [g, d], enc)

        # inherit from the best of the moment, when it beat the pair
        rng = self._rng(n, "inherit")
        met = {m["id"]: m for m in task["opponents"]["gens"] + task["opponents"]["discs"]}  # as they were then
        heirs = {}
        for side_name, me, ids, scores in (("gen", g, enc["gens"], gen_fit), ("disc", d, enc["discs"], disc_fit)):
            best = max(range(len(ids)), key=lambda i: (_finite(scores[i]), -i))
            if best != 0 and _finite(scores[best]) > _finite(scores[0]):
                parent = {"parents": [], **met[ids[best]]}
                heirs[side_name] = self.child(rng, n, me["player"], SIDES_SLOT[side_name], side_name, [parent], [parent, me])
        for side_name, child in heirs.items():
            old = g if side_name == "gen" else d
            state["members"] = [child if m["id"] == old["id"] else m for m in state["members"]]
        new_g, new_d = heirs.get("gen", g), heirs.get("disc", d)
        state["last"] = {"fight": n, "player": g["player"], "gen": g["id"], "disc": d["id"], "gen_fitness": g["fitness"],
                         "disc_fitness": d["fitness"], "quality": g["quality"],
                         "inherits": {k: v["parents"] for k, v in heirs.items()}}
        state["stats"] = population_stats(state["members"])
        if state["sent"] < state["budget"]:
            state = self._send(state, new_g["id"], new_d["id"])
        return {**state, DOCUMENTS: documents}

    def finished(self, state: dict) -> bool:
        return not state["inflight"]

    def line(self, index: int, state: dict) -> str:
        last = state["last"]
        head = f"fight {state['done']:>4}/{state['budget']}"
        if last is None:
            return head
        if "error" in last:
            return f"{head} failed: {last['error']}"
        inherits = "  ".join(f"{k} inherits from {v[0]}" for k, v in last["inherits"].items())
        return (f"{head} player {last['player']}  gen fitness {last['gen_fitness']:.3f} "
                f"{quality_text(last['quality'] or {})}  disc fitness {last['disc_fitness']:.3f}  {inherits}").rstrip()

    # --- a fight ----------------------------------------------------------------------------------

    def _send(self, state: dict, g_id: str, d_id: str) -> dict:
        """The next fight of the pair (g, d) against the foreign members as they are now."""
        n = state["sent"]
        members = {m["id"]: m for m in state["members"]}
        g, d = members[g_id], members[d_id]
        foreign = [m for m in state["members"] if m["id"] not in (g_id, d_id) and not m.get("failed")
                   and (not self.arena.speciation or m["player"] != g["player"])]
        opp_gens, opp_discs = side(foreign, "gen"), side(foreign, "disc")
        liars = [j + 1 for j in byzantine(len(opp_discs), self.arena.byzantine, self._rng(n, "byzantine"))]
        task = {**self._train_task(n, n // max(1, len(training_pairs(state["members"]))), g, d, self.fight_steps),
                "opponents": {"gens": [_carried(m) for m in opp_gens], "discs": [_carried(m) for m in opp_discs]},
                "liars": liars, "samples": self.arena.match_samples, "metrics": True,
                "metric_samples": self.problem["metric_samples"]}
        return {**state, "inflight": [*state["inflight"], task], "sent": n + 1}

    def _score(self, task: dict, result: dict, members: dict) -> tuple[dict, list[float], list[float]]:
        """Fitness of everyone in the fight's encounter matrix (row and column 0: the pair)."""
        m = result["match"]
        players = lambda ids: [members[i]["player"] if i in members else -1 for i in ids]  # noqa: E731
        partners = [0] + [None] * (len(m["gens"]) - 1)
        judged = fitness.judged_mask(players(m["gens"]), players(m["discs"]), self.arena.speciation, partners)
        previous = ([members.get(i, {}).get("elo") or ELO_START for i in m["gens"]],
                    [members.get(i, {}).get("elo") or ELO_START for i in m["discs"]])
        gen_fit, disc_fit = self.fitness(m["matrix"], m["real_accept"], judged, previous)
        enc = {"gens": m["gens"], "discs": m["discs"], "matrix": m["matrix"], "real_accept": m["real_accept"],
               "judged": judged, "liars": task["liars"]}
        return enc, gen_fit, disc_fit


SIDES_SLOT = {"gen": 0, "disc": 1}


_finite = ranked_value

