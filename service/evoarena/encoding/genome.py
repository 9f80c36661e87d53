"""Genomes and deltas as plain data: a network is its architecture plus the seeds that made it.

A genome is an architecture, an init seed (or a base checkpoint), and the list of deltas applied
since, oldest first. Its JSON does not grow with the number of parameters: a Gaussian delta over
four million weights is still ``{"o": 81234, "s": 0.02}``.

Delta kinds (``k``, absent = gaussian, the common case) and their fields; ``l`` = [lo, hi) range
of parametric layers, absent = all:
    gaussian  o: noise offset, s: sigma          theta += s * noise[o:]
    norm      o, s                               same, then each tensor rescaled to its old norm
    adaptive  o, s, r: rate offset, t: tau       lograte += t * noise[r:]; theta += s * exp(lograte) * noise[o:]
    momentum  o, s, q: previous offset, w: weight
                                                 theta += s * noise[o:], then theta += (s * w) * noise[q:]
    rated     o, ss: one sigma per layer         for each layer k in l: theta_k += ss[k] * noise[o + start_k - start:]
    init      seed                               layers re-initialized from seed (crossover with another founder)
    load      uri                                layers copied from a checkpoint (crossover with a rebased lineage)
    cross     p: [parent 1 id, parent 2 id], at: point   no-op marking where a crossover child begins
    span      d: direction seed, s: scale, c: [c_1 .. c_K]
                                                 theta += s * sum_k c_k * noise[o_k:], o_1 .. o_K = span_offsets(d, K)
    morph     e: {"src": architecture before, ...the edit}, p: [other parent id], uri: its checkpoint
              an architecture edit (arch.py): the weights become `arch.apply_edit(src, theta, edit)`,
              a network of another shape; a crossover edit also reads the other parent's weights
Noise for a delta covering flat positions [a, b) is read from noise[o : o + b - a] (and, for
momentum, from noise[q : q + b - a]).

A span delta is the particle swarm's position (evolve/pso.py): a point of the K-dimensional
subspace spanned by K fixed noise-table directions, the same for every particle of a run. The
message carries the K coefficients and one seed, not K offsets: `span_offsets(d, K, n, table
size)` draws the offsets from numpy's PCG64 seeded by [SPAN_STREAM, d]. It is summed in float64,
k = 1 .. K in order, one exactly rounded multiply and add per term, then added to the float32
weights and rounded once (materialize.py), so numpy reproduces it bit for bit. It always covers
the whole network: crossover cannot restrict it to some layers (its directions are not layer-wise
slices of one noise read), and `restrict` refuses it.

Seed 003's mutation ideas, as the GA draws them (`child_delta`; spec: ga.mutation). Each keeps the
delta a few numbers and the child one delta from its parent:
- momentum (w > 0): q is the offset of the parent's own last delta (its fresh noise), so the
  child takes a fresh step and repeats its parent's fresh step with weight w, both scaled by s.
  One step of memory, not a running average: a running average would need the whole chain.
- self-adaptive sigma (tau' > 0): the child's s is its parent's s * exp(tau' * N(0, 1)), the
  N(0, 1) drawn by the GA's seeded generator; the parent's s is the s of the last gaussian or
  momentum delta in its list (none: the spec's sigma). The delta records the s it used, so
  replay needs nothing but the delta.
- per layer (rated): ss holds one sigma per parametric layer of the network, every one of them
  even when `l` mutates only one; each child multiplies each by its own exp(tau' * N(0, 1)). The
  parent's ss are those of the last rated delta in its list (none: the spec's sigma everywhere),
  so "the layer with the largest sigma" is well defined and inherited.
A rebase on a checkpoint drops the deltas before it, and with them the sigma or the previous
offset: the spec refuses these options together with checkpoints.

Every mutation kind acts on each layer separately, which is what makes one-point crossover at a
layer boundary exact: the child's layers below the point replay parent 1's deltas restricted to
those layers, the rest replay parent 2's, and each layer ends bit-identical to its parent's.

A genome's `arch` is its architecture after its last delta. Before a `morph` delta the network
had the architecture that delta names as `src` (`Genome.arch_at`), so the init seed, a base
checkpoint and every delta apply to the architecture of their own point in the list.

Ids are content hashes chained along the list: id_0 hashes (architecture, init seed), and
id_j = H(id_{j-1}, delta_j). Prefix j of a genome's list is therefore its ancestor j steps from
the root, with that ancestor's id, and rebasing on a checkpoint (whose id is id_j) keeps every id.
A `cross` marker restarts the chain from H(parent ids, point): a crossover child's id names its
parents, not the list that replays them, so it is the same whether the parents were rebased or not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from evoarena.encoding.nets import Layout, arch_key, layout

KINDS = ("gaussian", "norm", "adaptive", "momentum", "rated", "init", "load", "cross", "morph", "span")
NOISY = ("gaussian", "norm", "adaptive", "momentum", "rated")  # kinds that read noise at offset o
SIGMA_DIGITS = 6  # significant digits of an adapted sigma: enough, and keeps the JSON short
SIGMA_RANGE = (1e-8, 10.0)  # an adapted sigma stays in this range (the spec's sigma is in (0, 10])
SPAN_STREAM = 12  # first word of the seed of a span delta's direction offsets (a stream of its own)


@dataclass(frozen=True)
class Delta:
    """One edit of a network's weights; see the module docstring for what each kind means."""

    kind: str
    offset: int = 0
    sigma: float = 0.0
    layers: tuple[int, int] | None = None
    rate_offset: int = 0
    tau: float = 0.0
    seed: int = 0
    uri: str = ""
    mates: tuple[str, ...] = ()  # cross: the two parents' ids
    point: int = 0  # cross: first layer taken from the second parent
    edit: str = ""  # morph: canonical JSON of {"src": architecture before, **the edit}
    prev_offset: int = 0  # momentum: noise offset of the step it repeats
    weight: float = 0.0  # momentum: weight of the repeated step
    sigmas: tuple[float, ...] = ()  # rated: one sigma per parametric layer
    coefficients: tuple[float, ...] = ()  # span: one coefficient per direction (seed = the direction seed)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"delta kind {self.kind!r} is unknown; accepted: {', '.join(KINDS)}")
        # Normalize types so that the id (a hash of the JSON form) survives a JSON round trip.
        for name, kind in (("offset", int), ("sigma", float), ("rate_offset", int), ("tau", float), ("seed", int),
                           ("point", int), ("mates", tuple), ("prev_offset", int), ("weight", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "sigmas", tuple(float(x) for x in self.sigmas))
        object.__setattr__(self, "coefficients", tuple(float(x) for x in self.coefficients))
        if self.kind == "span" and self.layers is not None:
            raise ValueError(f"a span delta covers the whole network; got layers {self.layers}")
        if self.layers is not None:
            object.__setattr__(self, "layers", (int(self.layers[0]), int(self.layers[1])))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {} if self.kind == "gaussian" else {"k": self.kind}
        if self.kind in ("gaussian", "norm", "adaptive", "momentum"):
            d["o"], d["s"] = self.offset, self.sigma
        if self.kind == "adaptive":
            d["r"], d["t"] = self.rate_offset, self.tau
        if self.kind == "momentum":
            d["q"], d["w"] = self.prev_offset, self.weight
        if self.kind == "rated":
            d["o"], d["ss"] = self.offset, list(self.sigmas)
        if self.kind == "init":
            d["seed"] = self.seed
        if self.kind == "span":
            d["d"], d["s"], d["c"] = self.seed, self.sigma, list(self.coefficients)
        if self.kind == "load":
            d["uri"] = self.uri
        if self.kind == "cross":
            d["p"], d["at"] = list(self.mates), self.point
        if self.kind == "morph":
            d["e"] = json.loads(self.edit)
            if self.mates:
                d["p"], d["uri"] = list(self.mates), self.uri
        if self.layers is not None:
            d["l"] = list(self.layers)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Delta:
        if not isinstance(d, dict) or set(d) - {"k", "o", "s", "r", "t", "seed", "uri", "l", "p", "at", "e", "q", "w", "ss", "d", "c"}:
            raise ValueError(f"delta {d!r}: a JSON object with only the keys k, o, s, r, t, seed, uri, l, p, at, e, q, w, ss, d, c")
        layers = d.get("l")
        edit = d.get("e")
        if edit is not None and not (isinstance(edit, dict) and isinstance(edit.get("src"), dict)):
            raise ValueError(f"delta {d!r}: 'e' must be an edit object with the 'src' architecture")
        sigmas = d.get("ss", [])
        if not (isinstance(sigmas, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in sigmas)):
            raise ValueError(f"delta {d!r}: 'ss' must be a list of numbers, one sigma per layer")
        coefficients = d.get("c", [])
        if not (isinstance(coefficients, list) and all(_number(x) for x in coefficients)):
            raise ValueError(f"delta {d!r}: 'c' must be a list of finite numbers, one coefficient per direction")
        return cls(d.get("k", "gaussian"), int(d.get("o", 0)), float(d.get("s", 0.0)), tuple(layers) if layers else None,
                   int(d.get("r", 0)), float(d.get("t", 0.0)), int(d.get("d", d.get("seed", 0))), str(d.get("uri", "")),
                   tuple(d.get("p", ())), int(d.get("at", 0)), canonical(edit) if edit is not None else "",
                   int(d.get("q", 0)), float(d.get("w", 0.0)), tuple(sigmas), tuple(coefficients))

    @property
    def key(self) -> bytes:
        """What ids hash. A morph names its other parent by id: where that parent's checkpoint is
        stored (the uri) says nothing about the weights, so the same run gives the same ids
        whatever its artifact store."""
        d = self.to_json()
        if self.kind == "morph":
            d.pop("uri", None)
        return canonical(d).encode()

    @property
    def source_arch(self) -> dict:
        """morph: the architecture the edit starts from."""
        return json.loads(self.edit)["src"]


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def canonical(data: Any) -> str:
    """The one JSON form of `data` that ids hash (key order does not matter)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Checkpoint:
    """Saved weights of genome `id` at `uri`; a genome based on it lists only the deltas after it."""

    id: str
    uri: str


@dataclass(frozen=True)
class Genome:
    """A network as data: build it with `materialize.Materializer`."""

    arch: dict
    init_seed: int
    deltas: tuple[Delta, ...] = ()
    base: Checkpoint | None = None
    parents: tuple[str, ...] = ()
    _prefix_ids: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def prefix_ids(self) -> tuple[str, ...]:
        """prefix_ids[j] is the id of this genome's first j deltas (j = 0: the root or the base)."""
        if self._prefix_ids is None:
            ids = [self.base.id if self.base else _root_id(self.arch_at(0), self.init_seed)]
            for delta in self.deltas:
                ids.append(_chain(ids[-1], delta))
            object.__setattr__(self, "_prefix_ids", tuple(ids))
        return self._prefix_ids  # type: ignore[return-value]

    @property
    def id(self) -> str:
        return self.prefix_ids[-1]

    @property
    def depth(self) -> int:
        return len(self.deltas)

    def arch_at(self, j: int) -> dict:
        """The architecture after the first j deltas: the `src` of the next morph, else `arch`."""
        return next((d.source_arch for d in self.deltas[j:] if d.kind == "morph"), self.arch)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "arch": self.arch,
            "init_seed": self.init_seed,
            "base": None if self.base is None else {"id": self.base.id, "uri": self.base.uri},
            "deltas": [d.to_json() for d in self.deltas],
            "parents": list(self.parents),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Genome:
        """Parse and check a genome; a wrong id (a corrupt or forged message) is refused."""
        base = d.get("base")
        genome = cls(
            arch=d["arch"],
            init_seed=int(d["init_seed"]),
            deltas=tuple(Delta.from_json(x) for x in d.get("deltas", [])),
            base=Checkpoint(base["id"], base["uri"]) if base else None,
            parents=tuple(d.get("parents", [])),
        )
        if "id" in d and d["id"] != genome.id:
            raise ValueError(f"genome id {d['id']!r} does not match its content (computed {genome.id!r})")
        return genome


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _root_id(arch: dict, init_seed: int) -> str:
    return _digest(f"root:{arch_key(arch)}:{init_seed}".encode())


def _chain(parent_id: str, delta: Delta) -> str:
    if delta.kind == "cross":
        return _digest(b"cross:" + delta.key)
    return _digest(parent_id.encode() + b":" + delta.key)


# --- edits: how genomes are made from genomes -------------------------------------------------


def founder(arch: dict, init_seed: int) -> Genome:
    """A generation-0 individual: freshly initialized from `init_seed`."""
    return Genome(arch=arch, init_seed=init_seed)


def mutate(parent: Genome, delta: Delta) -> Genome:
    """The child of `parent` with one more delta; its id costs one hash, whatever the depth."""
    return replace(
        parent,
        deltas=parent.deltas + (delta,),
        parents=(parent.id,),
        _prefix_ids=parent.prefix_ids + (_chain(parent.id, delta),),
    )


def crossover(first: Genome, second: Genome, point: int, then: tuple[Delta, ...] = ()) -> Genome:
    """One-point crossover at a layer boundary: layers [0, point) from `first`, the rest from `second`,
    followed by the child's own mutations `then` (seed 001: crossover, then mutation).

    The shared history of the two parents is kept once; after it, each parent's deltas are
    restricted to its side of the point. If the parents do not share their start (different init
    seeds or checkpoints), the second side starts with an `init` or `load` delta for its layers.
    """
    if arch_key(first.arch) != arch_key(second.arch):
        raise ValueError("crossover needs two parents of the same architecture")
    lay = layout(first.arch)
    if not 0 < point < lay.n_layers:
        raise ValueError(f"crossover point {point} must be between 1 and {lay.n_layers - 1}")
    same_start = first.base == second.base and (first.base is not None or first.init_seed == second.init_seed)
    shared = 0
    if same_start:
        while shared < min(first.depth, second.depth) and first.deltas[shared] == second.deltas[shared]:
            shared += 1
    tail = (0, point), (point, lay.n_layers)
    deltas = list(first.deltas[:shared])
    deltas += [r for d in first.deltas[shared:] if (r := restrict(d, *tail[0], lay))]
    if not same_start:
        start = Delta("load", uri=second.base.uri) if second.base else Delta("init", seed=second.init_seed)
        deltas.append(replace(start, layers=tail[1]))
    deltas += [r for d in second.deltas[shared:] if (r := restrict(d, *tail[1], lay))]
    return Genome(
        arch=first.arch,
        init_seed=first.init_seed,
        deltas=tuple(deltas) + (Delta("cross", mates=(first.id, second.id), point=point),) + tuple(then),
        base=first.base,
        parents=(first.id, second.id),
    )


def restrict(delta: Delta, lo: int, hi: int, lay: Layout) -> Delta | None:
    """`delta` limited to parametric layers [lo, hi), reading the same noise for the layers it keeps."""
    if delta.kind == "cross":
        return None  # markers only name an ancestor; the merged list replays the weights without them
    if delta.kind == "span":
        raise ValueError("a span delta (a particle's position) covers the whole network: crossover cannot split it "
                         "at a layer; run crossover only on GA genomes")
    own_lo, own_hi = delta.layers or (0, lay.n_layers)
    new_lo, new_hi = max(own_lo, lo), min(own_hi, hi)
    if new_lo >= new_hi:
        return None
    if (new_lo, new_hi) == (own_lo, own_hi):
        return delta
    shift = lay.span((new_lo, new_hi))[0] - lay.span((own_lo, own_hi))[0]
    noisy = delta.kind in NOISY
    return replace(
        delta,
        layers=(new_lo, new_hi),
        offset=delta.offset + shift if noisy else delta.offset,
        rate_offset=delta.rate_offset + shift if delta.kind == "adaptive" else delta.rate_offset,
        prev_offset=delta.prev_offset + shift if delta.kind == "momentum" else delta.prev_offset,
    )


def rebase(genome: Genome, checkpoint: Checkpoint) -> Genome:
    """The same genome (same id) expressed as `checkpoint` plus the deltas after it.

    Returns `genome` unchanged if the checkpoint is not one of its ancestors.
    """
    ids = genome.prefix_ids
    try:
        j = ids.index(checkpoint.id)
    except ValueError:
        return genome
    if j == 0 and genome.base == checkpoint:
        return genome
    return replace(genome, base=checkpoint, deltas=genome.deltas[j:], _prefix_ids=ids[j:])


def ancestor(genome: Genome, ancestor_id: str) -> Genome:
    """The ancestor of `genome` whose id is `ancestor_id`, rebuilt from the front of its own delta
    list (so a message that names an ancestor need not carry it). ValueError if it is not there."""
    ids = genome.prefix_ids
    if ancestor_id not in ids:
        raise ValueError(f"{ancestor_id} is not an ancestor in the delta list of genome {genome.id}")
    j = ids.index(ancestor_id)
    return replace(genome, arch=genome.arch_at(j), deltas=genome.deltas[:j], parents=(ids[j - 1],) if j > 0 else (), _prefix_ids=ids[: j + 1])


def sample_delta(rng: np.random.Generator, kind: str, sigma: float, tau: float, lay: Layout, noise_size: int) -> Delta:
    """A random mutation of the given kind (spec: ga.mutation) for a network laid out as `lay`."""

    def offset(n: int) -> int:
        return _offset(rng, n, noise_size)

    if kind == "layer":
        layer = int(rng.integers(0, lay.n_layers))
        start, stop = lay.span((layer, layer + 1))
        return Delta("gaussian", offset(stop - start), sigma, layers=(layer, layer + 1))
    if kind in ("gaussian", "norm"):
        return Delta(kind, offset(lay.size), sigma)
    if kind == "adaptive":
        return Delta("adaptive", offset(lay.size), sigma, rate_offset=offset(lay.size), tau=tau)
    raise ValueError(f"mutation kind {kind!r} is unknown; accepted: gaussian, layer, norm, adaptive")


def child_delta(rng: np.random.Generator, parent: Genome, mutation: Any, lay: Layout, noise_size: int) -> Delta:
    """The mutation of one child of `parent`, as spec `mutation` (ga.mutation) asks: `sample_delta`
    unless one of seed 003's options is on (momentum, self_adapt, per_layer; the module docstring
    defines them). With every option off it draws from `rng` exactly what `sample_delta` draws."""
    m = mutation
    if m.per_layer:
        sigmas = tuple(_adapted(s, m.self_adapt, rng) for s in inherited_sigmas(parent, m.sigma, lay.n_layers))
        if m.kind != "layer":
            return Delta("rated", _offset(rng, lay.size, noise_size), sigmas=sigmas)
        if m.layer_choice == "largest_sigma":
            layer = int(np.argmax(sigmas))  # ties: the lowest layer
        else:
            layer = int(rng.integers(0, lay.n_layers))
        start, stop = lay.span((layer, layer + 1))
        return Delta("rated", _offset(rng, stop - start, noise_size), sigmas=sigmas, layers=(layer, layer + 1))
    sigma = _adapted(inherited_sigma(parent, m.sigma), m.self_adapt, rng) if m.self_adapt > 0 else m.sigma
    delta = sample_delta(rng, m.kind, sigma, m.tau, lay, noise_size)
    last = parent.deltas[-1] if parent.deltas else None
    if m.momentum > 0 and last is not None and last.kind in ("gaussian", "momentum") and last.layers is None:
        return Delta("momentum", delta.offset, delta.sigma, prev_offset=last.offset, weight=m.momentum)
    return delta  # a founder (or a parent whose last delta was no whole-network step): nothing to repeat


def inherited_sigma(genome: Genome, default: float) -> float:
    """The sigma of the last gaussian or momentum delta of `genome` (self-adaptive sigma), else `default`."""
    return next((d.sigma for d in reversed(genome.deltas) if d.kind in ("gaussian", "momentum")), default)


def inherited_sigmas(genome: Genome, default: float, n_layers: int) -> tuple[float, ...]:
    """The per-layer sigmas of the last rated delta of `genome`, else `default` for every layer."""
    return next((d.sigmas for d in reversed(genome.deltas) if d.kind == "rated"), (default,) * n_layers)


def _adapted(sigma: float, tau: float, rng: np.random.Generator) -> float:
    """sigma * exp(tau * N(0, 1)), kept in SIGMA_RANGE and rounded to SIGMA_DIGITS digits."""
    drawn = sigma * float(np.exp(tau * rng.standard_normal()))
    return float(f"{min(max(drawn, SIGMA_RANGE[0]), SIGMA_RANGE[1]):.{SIGMA_DIGITS}g}")


def span(founder_genome: Genome, direction_seed: int, scale: float, coefficients: list[float]) -> Genome:
    """A particle at `coefficients` in the span of the K = len(coefficients) directions of
    `direction_seed`, around `founder_genome`: one delta from it, so every worker that has built
    the founder builds the particle with one delta."""
    return mutate(founder_genome, Delta("span", sigma=scale, seed=direction_seed, coefficients=tuple(coefficients)))


def span_offsets(direction_seed: int, directions: int, length: int, noise_size: int) -> list[int]:
    """The noise offsets o_1 .. o_K of a span delta's directions over `length` weights: a pure
    function of the seed and the sizes, so the message carries one seed instead of K offsets."""
    if length > noise_size:
        raise ValueError(f"the noise table ({noise_size} samples) is smaller than the {length} parameters to span")
    rng = np.random.default_rng([SPAN_STREAM, direction_seed])
    return [int(o) for o in rng.integers(0, noise_size - length + 1, size=directions)]


def _offset(rng: np.random.Generator, n: int, noise_size: int) -> int:
    if n > noise_size:
        raise ValueError(f"the noise table ({noise_size} samples) is smaller than the {n} parameters to mutate")
    return int(rng.integers(0, noise_size - n + 1))


def morph(parent: Genome, edit: dict, other: Genome | None = None) -> Genome:
    """The child of an architecture edit of `parent` (arch.py: add, delete, change, crossover).

    The child's weights are a pure function of the parent's, the edit (its seed included) and,
    for a crossover edit, the other parent's, so any worker holding the parent builds it. The other
    parent is named by id and checkpoint: it must be a checkpoint with no deltas after it.
    """
    from evoarena.encoding.arch import edited_arch  # arch.py builds on nets; genomes only need it for this edit

    if (edit.get("op") == "crossover") != (other is not None):
        raise ValueError("a crossover edit needs the other parent, and only a crossover edit takes one")
    delta = Delta("morph", edit=canonical({**edit, "src": parent.arch}))
    if other is not None:
        if other.base is None or other.deltas:
            raise ValueError(f"crossover parent {other.id} must be a checkpoint with no deltas after it")
        delta = replace(delta, mates=(other.id,), uri=other.base.uri)
    return replace(
        parent,
        arch=edited_arch(parent.arch, edit),
        deltas=parent.deltas + (delta,),
        parents=(parent.id,) + ((other.id,) if other is not None else ()),
        _prefix_ids=parent.prefix_ids + (_chain(parent.id, delta),),
    )


def trained(parent: Genome, how: dict, uri: str) -> Genome:
    """A genome whose weights came from gradient training of `parent` (no seed can replay them):
    the checkpoint at `uri`. Its id hashes the parent's id and `how` (the training task's
    description), so a redelivered task names the same genome."""
    return Genome(arch=parent.arch, init_seed=0, base=Checkpoint(trained_id(parent.id, how), uri), parents=(parent.id,))


def trained_id(parent_id: str, how: dict) -> str:
    """The id `trained` gives, before the checkpoint exists (the checkpoint is saved under it)."""
    return _digest(b"trained:" + parent_id.encode() + b":" + canonical(how).encode())
