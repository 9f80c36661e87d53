"""Genome -> weights, with a bounded cache of recently built networks.

Building a genome from scratch replays its whole delta list: the cost grows with the generations
(seed 003: "at generation 500 it takes 2 minutes to initialize the policy"). A worker therefore keeps
the networks it built in an LRU cache bounded by bytes, and builds a genome by the first that applies:

1. the genome itself is cached;
2. a crossover child whose two parents are cached: copy layers from each, apply the new deltas;
3. the nearest cached ancestor (the parent, usually): copy it, apply the remaining deltas;
4. the base checkpoint: load it, apply the deltas after it;
5. the full chain: initialize from the seed, apply every delta.

Every path gives bit-identical weights on the same device type: each delta is applied by the same
function to the same input bits, whichever path got there.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from evoarena.encoding import nets
from evoarena.encoding.genome import Delta, Genome, span_offsets
from evoarena.encoding.noise import NoiseTable


@dataclass
class Weights:
    """A built network: its flat parameter vector and, once it has had an adaptive delta, its log-rates."""

    flat: torch.Tensor
    rates: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        rates = 0 if self.rates is None else self.rates.numel() * self.rates.element_size()
        return self.flat.numel() * self.flat.element_size() + rates

    def clone(self) -> Weights:
        return Weights(self.flat.clone(), None if self.rates is None else self.rates.clone())

    def tensors(self, arch: dict) -> dict[str, torch.Tensor]:
        """A state dict (plus ``rates.*`` for adaptive genomes), as saved in a checkpoint."""
        lay = nets.layout(arch)
        out = {k: v.clone() for k, v in lay.views(self.flat).items()}
        if self.rates is not None:
            out.update({f"rates.{k}": v.clone() for k, v in lay.views(self.rates).items()})
        return out

    @classmethod
    def from_tensors(cls, arch: dict, tensors: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> Weights:
        lay = nets.layout(arch)
        flat = lay.flatten(tensors).to(device)
        has_rates = any(k.startswith("rates.") for k in tensors)
        rates = lay.flatten({k[6:]: v for k, v in tensors.items() if k.startswith("rates.")}).to(device) if has_rates else None
        return cls(flat, rates)


class ParentCache:
    """Least-recently-used map from genome id to Weights, bounded by the bytes it holds."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self._items: OrderedDict[str, Weights] = OrderedDict()

    def __contains__(self, genome_id: str) -> bool:
        return genome_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, genome_id: str) -> Weights | None:
        weights = self._items.get(genome_id)
        if weights is not None:
            self._items.move_to_end(genome_id)
        return weights

    def put(self, genome_id: str, weights: Weights) -> None:
        if genome_id in self._items:
            self.used -= self._items.pop(genome_id).nbytes
        if weights.nbytes > self.budget:
            return  # larger than the whole budget: never cache it rather than evict everything
        self._items[genome_id] = weights
        self.used += weights.nbytes
        while self.used > self.budget:
            _, evicted = self._items.popitem(last=False)
            self.used -= evicted.nbytes

    def ids(self) -> list[str]:
        return list(self._items)


# How a genome can be built, cheapest first; the first three are cache hits (nothing replayed
# from a checkpoint or from the start). Every count of hits uses these two.
BUILDS = ("cached", "from_parent", "from_ancestor", "from_checkpoint", "full_chain")
CACHE_HITS = BUILDS[:3]


@dataclass
class Stats:
    """How genomes were built; `hit_rate` is the share that did not replay a chain from the start."""

    cached: int = 0  # the genome itself was in the cache
    from_parent: int = 0  # cached parent (or both crossover parents) plus the new deltas
    from_ancestor: int = 0  # an older cached ancestor plus several deltas
    from_checkpoint: int = 0
    full_chain: int = 0
    deltas_applied: int = 0

    @property
    def builds(self) -> int:
        return sum(getattr(self, build) for build in BUILDS)

    @property
    def hit_rate(self) -> float:
        hits = sum(getattr(self, build) for build in CACHE_HITS)
        return hits / self.builds if self.builds else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "hit_rate": self.hit_rate}


CheckpointLoader = Callable[[str], dict[str, torch.Tensor]]


@dataclass
class Materializer:
    """Builds genomes into Weights on one device, through a ParentCache. One per worker process."""

    noise: NoiseTable
    cache: ParentCache
    load_checkpoint: CheckpointLoader | None = None
    device: torch.device | str = "cpu"
    stats: Stats = field(default_factory=Stats)

    def build(self, genome: Genome) -> Weights:
        """The weights of `genome`. The result is shared with the cache: treat it as read-only."""
        return self.build_how(genome)[0]

    def build_how(self, genome: Genome) -> tuple[Weights, str]:
        """`build`, plus which path built it: a field name of Stats ("cached", "from_parent", ...)."""
        weights, how = self._build(genome)
        if weights.rates is not None and how != "cached" and not weights.rates.any():
            weights.rates = None  # all-zero log-rates mean "no adaptive delta yet", however built
        setattr(self.stats, how, getattr(self.stats, how) + 1)
        self.cache.put(genome.id, weights)
        return weights, how

    def _build(self, genome: Genome) -> tuple[Weights, str]:
        ids = genome.prefix_ids
        if (hit := self.cache.get(genome.id)) is not None:
            return hit, "cached"
        if (cross := _last_cross(genome)) is not None and all(p in self.cache for p in genome.deltas[cross].mates):
            return self._from_crossover_parents(genome, cross), "from_parent"
        for j in range(len(ids) - 2, -1, -1):  # nearest ancestor first
            if (ancestor := self.cache.get(ids[j])) is not None:
                if j == len(ids) - 2:
                    return self._child(genome, ancestor, genome.deltas[-1]), "from_parent"
                return self._replay(genome, ancestor.clone(), genome.deltas[j:]), "from_ancestor"
        root = genome.arch_at(0)
        if genome.base is not None:
            return self._replay(genome, self._load(root, genome.base.uri), genome.deltas), "from_checkpoint"
        flat = torch.empty(nets.layout(root).size)
        nets.init_layers(root, genome.init_seed, flat)
        return self._replay(genome, Weights(flat.to(self.device)), genome.deltas), "full_chain"

    def _from_crossover_parents(self, genome: Genome, cross: int) -> Weights:
        marker = genome.deltas[cross]
        first, second = (self.cache.get(p) for p in marker.mates)
        start, _ = nets.layout(genome.arch).span((marker.point, nets.layout(genome.arch).n_layers))
        child = first.clone()
        child.flat[start:] = second.flat[start:]
        if first.rates is not None or second.rates is not None:
            child.rates = _rates(first, child.flat)
            child.rates[start:] = _rates(second, child.flat)[start:]
        return self._replay(genome, child, genome.deltas[cross + 1 :])

    def _child(self, genome: Genome, parent: Weights, delta: Delta) -> Weights:
        """Parent plus one delta: the hot path. A whole-network Gaussian delta reads the parent and
        the noise once and writes the child once (no separate copy); the same bits as clone + add_."""
        if delta.kind == "gaussian" and delta.layers is None:
            flat = torch.add(parent.flat, self.noise.slice(delta.offset, parent.flat.numel(), parent.flat.device),
                             alpha=delta.sigma)
            self.stats.deltas_applied += 1
            return Weights(flat, None if parent.rates is None else parent.rates.clone())
        return self._replay(genome, parent.clone(), (delta,))

    def _replay(self, genome: Genome, weights: Weights, deltas: tuple[Delta, ...]) -> Weights:
        parent_id = genome.prefix_ids[-2] if len(genome.prefix_ids) > 1 else None
        first = genome.depth - len(deltas)
        morphs = any(d.kind == "morph" for d in deltas)  # else every delta acts on genome.arch
        for i, delta in enumerate(deltas):
            if i == len(deltas) - 1 and parent_id in genome.parents and parent_id not in self.cache:
                # Keep the parent too: its other children, next in line, then cost one delta each.
                self.cache.put(parent_id, weights.clone())
            apply_delta(delta, weights, genome.arch_at(first + i) if morphs else genome.arch, self.noise, self._load)
        self.stats.deltas_applied += len(deltas)
        return weights

    def _load(self, arch: dict, uri: str, genome_id: str = "") -> Weights:
        """The weights saved at `uri` (genome `genome_id`, taken from the cache when it is there)."""
        if genome_id and (cached := self.cache.get(genome_id)) is not None:
            return cached.clone()
        if self.load_checkpoint is None:
            raise RuntimeError(f"genome needs checkpoint {uri} but this materializer has no artifact store")
        return Weights.from_tensors(arch, self.load_checkpoint(uri), self.device)


def _last_cross(genome: Genome) -> int | None:
    """Index of the crossover marker of a crossover child (one with two parents), else None."""
    if len(genome.parents) != 2:
        return None
    for i in range(len(genome.deltas) - 1, -1, -1):
        if genome.deltas[i].kind == "cross":
            return i
    return None


def _rates(weights: Weights, like: torch.Tensor) -> torch.Tensor:
    return weights.rates.clone() if weights.rates is not None else torch.zeros_like(like)


def apply_delta(delta: Delta, w: Weights, arch: dict, noise: NoiseTable, load: Callable[..., Weights]) -> None:
    """Apply one delta to `w` in place (a morph replaces `w.flat` with a vector of the new shape).
    The only place where the delta kinds get their meaning. `arch` is the network's architecture
    before this delta; `load(arch, uri, genome_id)` gives saved weights."""
    lay = nets.layout(arch)
    start, stop = lay.span(delta.layers)
    theta = w.flat[start:stop]
    device = w.flat.device
    if delta.kind == "gaussian":
        theta.add_(noise.slice(delta.offset, stop - start, device), alpha=delta.sigma)
    elif delta.kind == "norm":
        for slot in lay.slots:
            if start <= slot.start and slot.stop <= stop:
                t = w.flat[slot.start : slot.stop]
                before = torch.linalg.vector_norm(t)
                t.add_(noise.slice(delta.offset + slot.start - start, t.numel(), device), alpha=delta.sigma)
                after = torch.linalg.vector_norm(t)
                if after > 0:
                    t.mul_(before / after)
    elif delta.kind == "adaptive":
        if w.rates is None:
            w.rates = torch.zeros_like(w.flat)
        rates = w.rates[start:stop]
        rates.add_(noise.slice(delta.rate_offset, stop - start, device), alpha=delta.tau)
        theta.addcmul_(rates.exp(), noise.slice(delta.offset, stop - start, device), value=delta.sigma)
    elif delta.kind == "momentum":
        theta.add_(noise.slice(delta.offset, stop - start, device), alpha=delta.sigma)
        theta.add_(noise.slice(delta.prev_offset, stop - start, device), alpha=delta.sigma * delta.weight)
    elif delta.kind == "rated":
        if len(delta.sigmas) != lay.n_layers:
            raise ValueError(f"rated delta has {len(delta.sigmas)} sigmas (ss); this network has {lay.n_layers} layers")
        lo, hi = delta.layers or (0, lay.n_layers)
        for k in range(lo, hi):
            k_start, k_stop = lay.layer_bounds[k]
            w.flat[k_start:k_stop].add_(noise.slice(delta.offset + k_start - start, k_stop - k_start, device),
                                        alpha=delta.sigmas[k])
    elif delta.kind == "init":
        fresh = torch.empty(lay.size)
        nets.init_layers(arch, delta.seed, fresh, delta.layers)
        theta.copy_(fresh[start:stop])
        if w.rates is not None:
            w.rates[start:stop] = 0
    elif delta.kind == "span":
        theta.copy_((theta.double() + delta.sigma * span_sum(delta, noise, stop - start, device)).float())
    elif delta.kind == "cross":
        pass  # a marker: the deltas before it already replayed the crossover
    elif delta.kind == "morph":
        from evoarena.encoding.arch import apply_edit  # arch.py builds on nets; only architecture edits need it

        edit = json.loads(delta.edit)
        other = None
        if delta.mates:  # a crossover edit: the other parent is a checkpoint, in the cache or at its uri
            other = load(edit["other_arch"], delta.uri, delta.mates[0]).flat
        w.flat, w.rates = apply_edit(edit["src"], w.flat, edit, other), None
    elif delta.kind == "load":
        source = load(arch, delta.uri)
        theta.copy_(source.flat[start:stop])
        if source.rates is not None or w.rates is not None:
            if w.rates is None:
                w.rates = torch.zeros_like(w.flat)
            w.rates[start:stop] = 0 if source.rates is None else source.rates[start:stop]
    else:  # Delta validates its kind; this is a programming error
        raise AssertionError(delta.kind)


def span_sum(delta: Delta, noise: NoiseTable, length: int, device: torch.device | str) -> torch.Tensor:
    """sum_k c_k * noise[o_k : o_k + length] in float64, k in order, one exactly rounded multiply and
    add per term (genome.py: a span delta), so any IEEE machine, numpy included, gets the same bits."""
    total = torch.zeros(length, dtype=torch.float64, device=device)
    for offset, c in zip(span_offsets(delta.seed, len(delta.coefficients), length, noise.size), delta.coefficients):
        total += c * noise.slice(offset, length, device).double()
    return total
