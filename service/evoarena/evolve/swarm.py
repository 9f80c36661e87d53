"""Particle swarm optimisation's update rule (Kennedy and Eberhart 1995), with the constriction
coefficients of Clerc and Kennedy (2002) as defaults. Pure numpy on plain arrays: the algorithms
that drive it (evolve/pso.py over network weights, the meta-parameter search) keep the swarm in
their stored state and call these functions.

A swarm of n particles in d dimensions; fitness is maximised, like everywhere in evoarena.

    start:  x_i ~ U(low, high),  v_i ~ U(-vmax, vmax),  p_i = x_i,  best_i = -inf
    every step:
        evaluate f(x_i) for every particle                       (workers, in parallel)
        remember:  if f(x_i) > best_i:  p_i <- x_i,  best_i <- f(x_i)
        g_i <- the best p_j among i's neighbours                  (global: every particle;
                                                                   ring: i-k .. i+k, wrapping)
        move:  v_i <- w v_i + c1 r1 * (p_i - x_i) + c2 r2 * (g_i - x_i)   r1, r2 ~ U(0, 1)^d
               v_i <- clip(v_i, -vmax, vmax)                       (velocity clamping)
               x_i <- x_i + v_i, clipped to [low, high]; a coordinate stopped by a wall loses
                      its velocity there, so it does not keep pushing into the wall

A failed evaluation (None or NaN) never becomes a personal best. Ties keep the older best, and a
neighbourhood's best breaks ties on the lower particle index, so a swarm is a pure function of
its seed and its evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evoarena.evolve import ranked_value
from evoarena.spec.constriction import ACCELERATION, INERTIA


@dataclass(frozen=True)
class Coefficients:
    """How a particle moves: inertia w, cognitive c1 (towards its own best), social c2
    (towards its neighbourhood's best), and the velocity bound per dimension."""

    inertia: float = INERTIA
    cognitive: float = ACCELERATION
    social: float = ACCELERATION
    vmax: np.ndarray | float = math.inf


@dataclass
class Swarm:
    """Every particle's position, velocity, personal best and its fitness, one row per particle."""

    position: np.ndarray  # (n, d)
    velocity: np.ndarray  # (n, d)
    best_position: np.ndarray  # (n, d)
    best_fitness: np.ndarray  # (n,), -inf until a particle has a valid evaluation

    def to_json(self) -> dict:
        """Plain lists of Python floats: a JSON round trip gives back the same bits."""
        return {"position": self.position.tolist(), "velocity": self.velocity.tolist(),
                "best_position": self.best_position.tolist(),
                "best_fitness": [None if math.isinf(f) else float(f) for f in self.best_fitness]}

    @classmethod
    def from_json(cls, data: dict) -> Swarm:
        best = [-math.inf if f is None else f for f in data["best_fitness"]]
        return cls(np.array(data["position"], dtype=np.float64), np.array(data["velocity"], dtype=np.float64),
                   np.array(data["best_position"], dtype=np.float64), np.array(best, dtype=np.float64))


def start(rng: np.random.Generator, particles: int, low: np.ndarray, high: np.ndarray, vmax: np.ndarray) -> Swarm:
    """Positions uniform in the box, velocities uniform in [-vmax, vmax], no best yet."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    dim = low.shape[0]
    position = rng.uniform(low, high, size=(particles, dim))
    velocity = rng.uniform(-1.0, 1.0, size=(particles, dim)) * np.minimum(vmax, high - low)
    return Swarm(position, velocity, position.copy(), np.full(particles, -math.inf))


def remember(swarm: Swarm, fitness: list[float | None]) -> Swarm:
    """Each particle's personal best after evaluating its current position."""
    f = np.array([ranked_value(v) for v in fitness], dtype=np.float64)
    better = f > swarm.best_fitness
    best_position = np.where(better[:, None], swarm.position, swarm.best_position)
    return Swarm(swarm.position, swarm.velocity, best_position, np.where(better, f, swarm.best_fitness))


def neighbourhood_best(swarm: Swarm, topology: str, neighbours: int = 1) -> np.ndarray:
    """g_i for every particle: the best personal best among its neighbours (itself included)."""
    n = len(swarm.best_fitness)
    if topology == "global":
        members = [list(range(n))] * n
    elif topology == "ring":
        members = [sorted({(i + k) % n for k in range(-neighbours, neighbours + 1)}) for i in range(n)]
    else:
        raise ValueError(f"topology {topology!r} is unknown; accepted: global, ring")
    # np.argmax takes the first maximum: among equal bests, the lowest index in `members`
    chosen = [m[int(np.argmax(swarm.best_fitness[m]))] for m in members]
    return swarm.best_position[chosen]


def move(swarm: Swarm, rng: np.random.Generator, how: Coefficients, low: np.ndarray, high: np.ndarray,
         topology: str = "global", neighbours: int = 1) -> Swarm:
    """One velocity and position update of every particle (the module docstring's `move`)."""
    x, v = swarm.position, swarm.velocity
    g = neighbourhood_best(swarm, topology, neighbours)
    r1 = rng.random(x.shape)
    r2 = rng.random(x.shape)
    v = how.inertia * v + how.cognitive * r1 * (swarm.best_position - x) + how.social * r2 * (g - x)
    v = np.clip(v, -np.asarray(how.vmax), np.asarray(how.vmax))
    moved = x + v
    x = np.clip(moved, low, high)
    v = np.where(x == moved, v, 0.0)
    return Swarm(x, v, swarm.best_position, swarm.best_fitness)


def best(swarm: Swarm) -> tuple[np.ndarray, float]:
    """The swarm's best position so far and its fitness (the lowest index among equals)."""
    i = int(np.argmax(swarm.best_fitness))
    return swarm.best_position[i], float(swarm.best_fitness[i])
