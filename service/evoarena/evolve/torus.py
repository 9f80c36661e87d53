"""Spatial co-evolution (Lipizzaner: Toutouh, Hemberg and O'Reilly; Al-Dujaili et al. 2018) as an
arena topology: `arena.topology: torus`.

The players are the cells of a rows x cols grid whose edges wrap (a torus); each cell owns one
generator and one discriminator. A cell's neighbourhood is itself and its four von Neumann
neighbours (north, east, south, west), so on a 3x3 torus cell 0 (row 0, col 0) has the
neighbourhood [0, 6, 1, 3, 2]: itself, north (row 2), east (col 1), south (row 1), west (col 2).

    train-pair   in round r every cell's generator trains with the discriminator of its neighbour in
                 direction OFFSETS[r % 5] (itself first, then north, east, south, west): over five
                 rounds each generator meets every discriminator of its neighbourhood, and in any
                 round each discriminator trains with exactly one generator (the pairing is a
                 permutation of the cells)
    match        a discriminator judges the generators of its own neighbourhood only
    select       synchronously in every cell and on each side: the cell's member is replaced by an
                 offspring of the best member of its neighbourhood when that one is strictly fitter
                 (trained weights and all: nothing is retrained from scratch); otherwise it stays.
                 Selection and replacement stay inside a neighbourhood, so a good generator spreads
                 one cell per round and different regions of the torus keep different generators

Everything here is a pure function of the grid's shape; evolve/arena.py decides what is fit.
"""

from __future__ import annotations

import math

OFFSETS = ((0, 0), (-1, 0), (0, 1), (1, 0), (0, -1))  # self, north, east, south, west: (row, col)


def shape(cells: int, given: list[int] | tuple[int, ...] = ()) -> tuple[int, int]:
    """(rows, cols) of a torus of `cells` cells: `given` when set, else the squarest factorisation."""
    if given:
        rows, cols = given
        if rows * cols != cells:
            raise ValueError(f"a torus of {rows} x {cols} has {rows * cols} cells, not {cells}")
        return rows, cols
    rows = max(r for r in range(1, math.isqrt(cells) + 1) if cells % r == 0)
    return rows, cells // rows


def neighbour(cell: int, offset: tuple[int, int], rows: int, cols: int) -> int:
    """The cell at `offset` (rows, cols) from `cell`, wrapping around the edges."""
    r, c = divmod(cell, cols)
    return ((r + offset[0]) % rows) * cols + (c + offset[1]) % cols


def neighbourhood(cell: int, rows: int, cols: int) -> list[int]:
    """`cell` and its von Neumann neighbours, in OFFSETS order, each cell once (small tori repeat)."""
    seen: list[int] = []
    for offset in OFFSETS:
        if (n := neighbour(cell, offset, rows, cols)) not in seen:
            seen.append(n)
    return seen


def partner(cell: int, round: int, rows: int, cols: int) -> int:
    """The cell whose discriminator trains with `cell`'s generator in round `round`."""
    return neighbour(cell, OFFSETS[round % len(OFFSETS)], rows, cols)


def judged(gen_cells: list[int], disc_cells: list[int], rows: int, cols: int) -> list[list[bool]]:
    """mask[i][j]: discriminator j (of cell disc_cells[j]) judges generator i when j's cell is in the
    neighbourhood of i's."""
    near = {c: set(neighbourhood(c, rows, cols)) for c in set(gen_cells)}
    return [[d in near[g] for d in disc_cells] for g in gen_cells]


def replacements(score: dict[int, float], rows: int, cols: int) -> dict[int, int]:
    """{cell: the neighbouring cell whose member replaces this cell's} for the cells whose
    neighbourhood holds a strictly fitter member than their own (`score[cell]`; a cell without a
    score has none and never gives its member). Ties go to the first in OFFSETS order."""
    out = {}
    for cell in range(rows * cols):
        best = max(neighbourhood(cell, rows, cols), key=lambda n: score.get(n, -math.inf))  # first of equals
        if score.get(best, -math.inf) > score.get(cell, -math.inf):
            out[cell] = best
    return out
