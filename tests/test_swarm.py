"""PSO's update rule (evolve/swarm.py) against numbers worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evoarena.evolve.swarm import ACCELERATION, INERTIA, Coefficients, Swarm, best, move, neighbourhood_best, remember, start


class Draws:
    """A stand-in for numpy's Generator that hands `move` the r1 and r2 given, in that order."""

    def __init__(self, *arrays):
        self.arrays = [np.asarray(a, dtype=np.float64) for a in arrays]

    def random(self, shape):
        drawn = self.arrays.pop(0)
        assert drawn.shape == shape
        return drawn


def sphere(x) -> float:
    """Fitness to maximise: minus the squared distance from the origin."""
    return -float(np.sum(np.square(x)))


def two_particles() -> Swarm:
    """Two particles on a 2-D sphere: particle 1's own best (-0.5, 0.5) is the swarm's best."""
    position = np.array([[1.0, 2.0], [-0.5, 0.5]])
    velocity = np.array([[0.1, -0.2], [0.0, 0.3]])
    best_position = np.array([[1.5, 1.0], [-0.5, 0.5]])
    return Swarm(position, velocity, best_position, np.array([sphere(p) for p in best_position]))


R1 = [[0.5, 0.25], [0.1, 0.2]]
R2 = [[0.2, 0.4], [0.3, 0.6]]
W, C = 0.7298, 1.49618
WIDE = (np.array([-10.0, -10.0]), np.array([10.0, 10.0]))


def test_the_defaults_are_clerc_and_kennedys_constriction():
    assert (INERTIA, ACCELERATION) == (0.7298, 1.49618)
    assert Coefficients() == Coefficients(0.7298, 1.49618, 1.49618, math.inf)


def test_velocity_and_position_of_a_2d_sphere_swarm_match_the_hand_computation():
    moved = move(two_particles(), Draws(R1, R2), Coefficients(), *WIDE)

    # v = w v + c1 r1 (p - x) + c2 r2 (g - x), with g = (-0.5, 0.5) for both particles
    v00 = W * 0.1 + C * 0.5 * (1.5 - 1.0) + C * 0.2 * (-0.5 - 1.0)  # 0.07298 + 0.374045 - 0.448854 = -0.001829
    v01 = W * -0.2 + C * 0.25 * (1.0 - 2.0) + C * 0.4 * (0.5 - 2.0)  # -0.14596 - 0.374045 - 0.897708 = -1.417713
    v10 = W * 0.0 + C * 0.1 * 0.0 + C * 0.3 * 0.0  # at its own best, which is the swarm's: only inertia
    v11 = W * 0.3
    assert moved.velocity == pytest.approx(np.array([[v00, v01], [v10, v11]]), abs=1e-15)
    assert moved.velocity[0].tolist() == pytest.approx([-0.001829, -1.417713], abs=1e-12)
    assert moved.velocity[1].tolist() == pytest.approx([0.0, 0.21894], abs=1e-12)
    assert moved.position == pytest.approx(np.array([[1.0 + v00, 2.0 + v01], [-0.5 + v10, 0.5 + v11]]), abs=1e-15)
    assert moved.best_position.tolist() == two_particles().best_position.tolist()  # moving remembers nothing


def test_velocity_is_clamped_to_vmax_per_dimension():
    moved = move(two_particles(), Draws(R1, R2), Coefficients(vmax=0.1), *WIDE)

    # unclamped: (-0.001829, -1.417713) and (0, 0.21894)
    assert moved.velocity.tolist() == [[W * 0.1 + C * 0.5 * 0.5 + C * 0.2 * -1.5, -0.1], [0.0, 0.1]]
    assert moved.position.tolist() == [[1.0 + moved.velocity[0, 0], 1.9], [-0.5, 0.6]]


def test_a_coordinate_stopped_by_the_box_stays_on_the_wall_and_loses_its_velocity():
    low, high = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    swarm = two_particles()
    swarm.position[0] = [0.9, 0.9]  # particle 0 inside the box, its own best above it, moving up
    swarm.velocity[0] = [0.5, 0.0]
    swarm.best_position[0] = [3.0, 0.9]
    swarm.best_fitness[0] = -100.0
    moved = move(swarm, Draws([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]), Coefficients(), low, high)

    # r1 = r2 = 0: v = w v = (0.3649, 0); x = 0.9 + 0.3649 = 1.2649 > 1: stopped at 1, velocity 0
    assert moved.position[0].tolist() == [1.0, 0.9]
    assert moved.velocity[0].tolist() == [0.0, 0.0]
    assert moved.position[1].tolist() == [-0.5, 0.5 + W * 0.3]  # the other particle moves freely
    assert moved.velocity[1].tolist() == [0.0, W * 0.3]


def fitnesses(values) -> Swarm:
    """Five particles in 1-D whose personal bests are at 10 * index with the given fitness."""
    n = len(values)
    positions = np.arange(n, dtype=np.float64)[:, None] * 10
    return Swarm(positions, np.zeros((n, 1)), positions.copy(), np.array(values, dtype=np.float64))


def test_the_global_best_is_the_best_personal_best_for_every_particle():
    g = neighbourhood_best(fitnesses([1.0, 5.0, 2.0, 4.0, 3.0]), "global")
    assert g[:, 0].tolist() == [10.0] * 5


def test_the_ring_best_looks_one_neighbour_each_side_and_wraps():
    g = neighbourhood_best(fitnesses([1.0, 5.0, 2.0, 4.0, 3.0]), "ring", 1)
    # 0 sees {4, 0, 1}: 1; 1 sees {0, 1, 2}: 1; 2 sees {1, 2, 3}: 1; 3 sees {2, 3, 4}: 3; 4 sees {3, 4, 0}: 3
    assert g[:, 0].tolist() == [10.0, 10.0, 10.0, 30.0, 30.0]


def test_the_ring_with_two_neighbours_each_side_sees_five_particles():
    g = neighbourhood_best(fitnesses([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]), "ring", 2)
    # particle 0 sees {5, 6, 0, 1, 2}: particle 5 (6.0); particle 2 sees {0 .. 4}: particle 4
    assert g[0, 0] == 50.0 and g[2, 0] == 40.0 and g[6, 0] == 50.0


def test_equal_bests_go_to_the_lower_particle_index():
    g = neighbourhood_best(fitnesses([2.0, 7.0, 1.0, 7.0, 0.0]), "global")
    assert g[:, 0].tolist() == [10.0] * 5
    position, fitness = best(fitnesses([2.0, 7.0, 1.0, 7.0, 0.0]))
    assert (position.tolist(), fitness) == ([10.0], 7.0)


def test_an_unknown_topology_is_refused_by_name():
    with pytest.raises(ValueError, match="topology 'star' is unknown; accepted: global, ring"):
        neighbourhood_best(fitnesses([1.0, 2.0]), "star")


def test_remember_keeps_strictly_better_positions_and_never_a_failed_evaluation():
    swarm = Swarm(np.array([[1.0], [2.0], [3.0], [4.0]]), np.zeros((4, 1)), np.array([[0.0], [0.0], [0.0], [0.0]]),
                  np.array([-1.0, -1.0, -1.0, -math.inf]))
    after = remember(swarm, [-0.5, -1.0, None, math.nan])

    assert after.best_position[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]  # better; a tie keeps the old; None; NaN
    assert after.best_fitness.tolist() == [-0.5, -1.0, -1.0, -math.inf]


def test_start_puts_positions_in_the_box_and_velocities_within_vmax():
    low, high = np.full(3, -2.0), np.full(3, 2.0)
    swarm = start(np.random.default_rng(0), 50, low, high, np.full(3, 0.5))

    assert swarm.position.shape == (50, 3) and swarm.velocity.shape == (50, 3)
    assert (swarm.position >= -2.0).all() and (swarm.position <= 2.0).all()
    assert (np.abs(swarm.velocity) <= 0.5).all() and np.abs(swarm.velocity).max() > 0.4
    assert swarm.best_position.tolist() == swarm.position.tolist()
    assert swarm.best_fitness.tolist() == [-math.inf] * 50


def test_a_swarm_round_trips_json_bit_for_bit():
    swarm = remember(start(np.random.default_rng(3), 4, np.full(5, -1.0), np.full(5, 1.0), np.full(5, 1.0)),
                     [0.1 / 3, None, -2.0 / 7, 1e-300])
    back = Swarm.from_json(json.loads(json.dumps(swarm.to_json())))

    for name in ("position", "velocity", "best_position", "best_fitness"):
        assert getattr(back, name).tobytes() == getattr(swarm, name).tobytes()


def test_the_rule_finds_the_minimum_of_a_10d_sphere_to_1e_minus_6():
    rng = np.random.default_rng(7)
    low, high = np.full(10, -5.0), np.full(10, 5.0)
    how = Coefficients(vmax=np.full(10, 10.0))
    swarm = start(rng, 20, low, high, how.vmax)
    for _ in range(400):  # 8,000 evaluations
        swarm = remember(swarm, [sphere(x) for x in swarm.position])
        swarm = move(swarm, rng, how, low, high)

    position, fitness = best(swarm)
    assert fitness >= -1e-6
    assert np.abs(position).max() < 1e-3
