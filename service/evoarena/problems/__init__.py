"""What a fitness means. Each problem module offers `make_data(problem, device)` and
`evaluate(arch, flat, data) -> {"fitness": ..., other metrics}`; `evolve/` never looks inside."""

from . import memorize

PROBLEMS = {"memorize": memorize}
