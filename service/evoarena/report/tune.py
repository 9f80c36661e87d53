"""The page of a meta-parameter search (`tune:`, evolve/tune.py) in `evoarena report`.

A trial is one whole arena run at one point of the search space; its result (op `trial`) holds the
values it tried and its objective (the result's fitness). The page is drawn from those results, so
a run still going shows the trials of its step in progress too:

    Objective        each trial's objective against trials run (counted from 1, in the order step,
                     trial), coloured by step, and the best so far
    Searched values  per searched value: each trial's objective against the value it tried (a log
                     axis for a log range), the best trial ringed
    Trials           a table: step, trial, each value, the objective or the trial's error

Steps and the trials of a step are counted from 1, as the progress line counts steps. A failed trial scores nothing: it is
left out of the figures and its error is in the table.
"""

from __future__ import annotations

import math

from evoarena.report.plots import plot_trial_values, plot_trials


def tune_trials(results: list[dict]) -> list[dict]:
    """The search's trials in the order step, trial: {"step", "trial" (both from 1), "values", "objective"
    (None for a failed trial or a NaN), "error"}."""
    trials = [r for r in results if r["op"] == "trial"]
    return [{"step": r["generation"] + 1, "trial": r["trial"] + 1, "values": r["values"], "error": r.get("error"),
             "objective": None if r.get("error") or not _finite(r.get("fitness")) else float(r["fitness"])}
            for r in sorted(trials, key=lambda r: (r["generation"], r["trial"]))]


def best_so_far(objectives: list[float | None]) -> list[float]:
    """After each trial: the best objective of it and those before it (NaN until one has scored)."""
    out, best = [], math.nan
    for value in objectives:
        if value is not None and not value <= best:  # NaN compares False: the first score replaces it
            best = value
        out.append(best)
    return out


def tune_sections(page, spec, results: list[dict], steps: list[dict]) -> None:
    """The Objective, Searched values and Trials sections of a tune run's page."""
    tune, trials = spec.tune, tune_trials(results)
    if not any(t["objective"] is not None for t in trials):
        page.note(f"No trial has scored yet ({len(trials)} stored): nothing to draw.")
    else:
        page.figure("Objective", plot_trials(trials, best_so_far([t["objective"] for t in trials]), tune.objective),
                    f"Each trial's {tune.objective} (one whole arena run, coloured by its step of {tune.population} "
                    f"trials) against trials run, and the best so far ({tune.search} search).")
        page.figure("Searched values", plot_trial_values(trials, tune.space, tune.objective),
                    f"Per searched value: each trial's {tune.objective} against the value it tried (log axis for a log "
                    "range), coloured by step; ringed: the best trial.")
    if not trials:
        return
    header = ("step", "trial", *(p.path for p in tune.space), tune.objective)
    page.table(header, [(str(t["step"]), str(t["trial"]), *(_show(t["values"].get(p.path)) for p in tune.space),
                         _show(t["objective"]) if t["objective"] is not None else f"failed: {t['error'] or 'NaN'}")
                        for t in trials], section="Trials")
    failed = sum(1 for t in trials if t["objective"] is None)
    if failed:
        page.note(f"{failed} of the {len(trials)} trials scored nothing and are not drawn; the table gives their errors.",
                  section="Trials")
    if trials and len(steps) < trials[-1]["step"]:
        page.note(f"Step {trials[-1]['step']} is in progress: {sum(t['step'] == trials[-1]['step'] for t in trials)} "
                  f"of its {tune.population} trials are stored so far.")


def _show(value) -> str:
    return "-" if value is None else str(value) if isinstance(value, int) else f"{value:.4g}"


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
