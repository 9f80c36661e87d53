"""The GA against particle swarm optimisation at an equal number of evaluations (issue 12 part 4).

Row format (shared with bench/ga_vs_pso_ring.py, whose `run_ring_meta(seeds)` returns rows of
this form for the ring arena's meta-parameters): one plain dict per (problem, algorithm):

    {
      "problem": "memorize-64",          # or "ring-meta"
      "algorithm": "ga",                 # or "pso"
      "fitness": "points memorized",     # what the fitness figures below are (higher is better)
      "evaluations": 2048,               # evaluations per run; equal for both algorithms of a problem
      "curve": {256: [f_seed0, f_seed1, ...], 512: [...], ...},
                                         # best fitness found so far after that many evaluations,
                                         # one value per seed (same seeds, same order, every count)
      "wall_s": [s_seed0, s_seed1, ...], # wall time of each seed's run, seconds
      "message_bytes": [b, ...],         # bytes of the JSON of every task payload sent (or a sample)
    }

The table prints, per row, the median and [min, max] over seeds at each evaluation count, the
median wall time and the median and largest message per task.
"""
