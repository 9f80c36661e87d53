"""What a fitness means. Each problem module offers `make_data(problem, device)` and
`evaluate(arch, flat, data) -> {"fitness": ..., other metrics}`, and may offer
`evaluate_many(arch, stacked, data) -> [metrics, ...]` for a group of networks in batched passes
(batched.py; a problem without it scores a group one network at a time). A problem whose
fitness depends on the task (atari: the episodes it plays) offers `evaluate_task(arch, flat, data,
task)` in place of `evaluate`. `evolve/` never looks inside."""

from evoarena.problems import atari, memorize

PROBLEMS = {"memorize": memorize, "atari": atari}
