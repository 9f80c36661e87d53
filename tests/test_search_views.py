"""`evoarena list`, `status`, `status --watch` and `report` of a particle swarm (pso:) and of a
meta-parameter search (tune:): their steps are steps, not generations, and a search's page draws
its objective against trials and the values each trial tried.

The runs are real and small, in this process (InlineExecutor) on one SQLite file shared by the
module: a swarm of 4 particles for 3 steps, a search of 2 steps of 2 trials, and the same search
stopped after its third trial (a run that is still going).
"""

from __future__ import annotations

import contextlib
import io
import math
import re

import numpy as np
import pytest

from evoarena.report import build as report, plots as report_plots, tune as report_tune
from evoarena import scheduler
from evoarena.cli.main import main
from evoarena.worker.inline import InlineExecutor
from evoarena.settings import Settings
from evoarena.spec.experiment import parse_spec
from evoarena.store import open_store
from evoarena.cli.watch import Live, live, watch
from evoarena.worker.worker import WorkerConfig
from headless_chromium import load
from helpers import StopAfter, images, pixel_variance, sections, tiny_pso, tiny_tune


class Runs:
    """The module's runs, all in one SQLite store."""

    def __init__(self, root):
        self.root, self.url = root, f"sqlite:///{root / 'results.db'}"
        self.store = open_store(self.url)
        self.settings = Settings(store=self.url, artifacts=str(root / "artifacts"), noise_dir=root / "noise")
        executor = InlineExecutor(WorkerConfig(self.url, self.settings.artifacts, str(self.settings.noise_dir), threads=1))
        scheduler.run(parse_spec(tiny_pso("pso-tiny", steps=3, particles=4)), self.store, executor)
        scheduler.run(parse_spec(tiny_tune(search="pso")), self.store, executor)
        with pytest.raises(KeyboardInterrupt):  # mid-way through the second step: its first trial stored
            scheduler.run(parse_spec({**tiny_tune(search="pso"), "name": "tune-partial"}), self.store,
                          StopAfter(executor, 3))
        executor.close()

    def printed(self, *args: str) -> tuple[int, str]:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = main([*args, "--store", self.url])
        return code, out.getvalue()

    def page(self, name: str) -> str:
        return report.build_page(self.store, name, self.settings, self.url)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    runs = Runs(tmp_path_factory.mktemp("search-views"))
    yield runs
    runs.store.close()


def spec_of(runs: Runs, name: str):
    return parse_spec(runs.store.get_experiment(name)["spec"])


# --- list and status --------------------------------------------------------------------------------


def test_list_counts_the_steps_of_a_swarm_and_of_a_search(runs):
    code, out = runs.printed("list")

    assert code == 0
    rows = {cells[0]: cells[1:3] for cells in (re.split(r"\s{2,}", line) for line in out.splitlines()[1:])}
    assert rows == {"pso-tiny": ["pso", "3/3 steps"], "tune-partial": ["tune", "1/2 steps"],
                    "tune-tiny": ["tune", "2/2 steps"]}


def test_status_of_a_swarm_counts_steps_of_particles(runs):
    code, out = runs.printed("status", "pso-tiny")
    last = runs.store.get_generation("pso-tiny", 2)

    assert code == 0
    assert "steps       3/3 complete (4 particles each)" in out.splitlines()
    assert f"best {last['stats']['best']:.6g}" in out and "generations" not in out
    assert "results     12 stored" in out.splitlines()


def test_status_of_a_search_still_going_counts_its_steps_of_trials(runs):
    code, out = runs.printed("status", "tune-partial")

    assert code == 0
    assert "steps       1/2 complete (2 trials each)" in out.splitlines()
    assert "results     3 stored" in out.splitlines()


# --- the watch --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, last_step, tasks", [("pso-tiny", "step 3/3", 4), ("tune-tiny", "step 2/2", 2)])
def test_the_watch_of_a_finished_swarm_or_search_shows_its_last_step_and_ends_complete(runs, name, last_step, tasks):
    out = io.StringIO()
    best = runs.store.get_generation(name, runs.store.last_generation(name))["stats"]["best"]

    assert watch(runs.store, name, every=0.01, stream=out) == 0

    lines = out.getvalue().splitlines()
    assert lines[-2] == f"{last_step}  done {tasks}  pending 0  failed 0  best {best:.6g}  eta 0s"
    assert lines[-1] == f"{name}: complete"


def test_the_live_row_of_a_search_still_going_is_its_second_step_with_one_trial_done(runs):
    now = live(runs.store, spec_of(runs, "tune-partial"))
    first = runs.store.get_generation("tune-partial", 0)

    assert (now.step, now.done, now.pending, now.failed) == ("step 2/2", 1, 1, 0)
    assert now.best == first["stats"]["best"]
    assert isinstance(now, Live) and now.eta_s is not None and now.eta_s > 0


# --- the data of a search's page ------------------------------------------------------------------


def test_tune_trials_are_in_step_then_trial_order_counted_from_one_and_failures_score_nothing():
    results = [{"op": "trial", "generation": 1, "trial": 0, "values": {"a": 2}, "fitness": 0.5, "error": None},
               {"op": "trial", "generation": 0, "trial": 1, "values": {"a": 3}, "fitness": None, "error": "boom"},
               {"op": "trial", "generation": 0, "trial": 0, "values": {"a": 1}, "fitness": math.nan, "error": None},
               {"op": "evaluate", "generation": 0, "fitness": 9.0}]

    assert report_tune.tune_trials(results) == [
        {"step": 1, "trial": 1, "values": {"a": 1}, "error": None, "objective": None},
        {"step": 1, "trial": 2, "values": {"a": 3}, "error": "boom", "objective": None},
        {"step": 2, "trial": 1, "values": {"a": 2}, "error": None, "objective": 0.5}]


def test_best_so_far_is_nan_until_a_trial_scores_then_never_falls():
    best = report_tune.best_so_far([None, 0.5, 0.25, None, 0.75])

    assert math.isnan(best[0]) and best[1:] == [0.5, 0.5, 0.5, 0.75]


# --- the pages --------------------------------------------------------------------------------------


def test_a_search_page_draws_the_objective_against_trials_the_searched_values_and_a_table_of_trials(runs):
    page = runs.page("tune-tiny")
    stored = runs.store.get_generation("tune-tiny", 1)["trials"]  # evolve/tune.py's history of the run

    assert sections(page) == ["Objective", "Searched values", "Trials", "Throughput", "Workers"]
    assert images(page) == ["Objective", "Searched values", "Throughput", "Workers", "workers over time"]
    assert "2/2 steps complete; 4 results stored" in page
    rows = [row.split("<td>")[1:] for row in page.split("<tr>") if row.startswith("<td>")]
    assert [[cell.split("</td>")[0] for cell in row] for row in rows] == [
        [str(t["step"] + 1), str(t["trial"] + 1), f"{t['values']['meta.lr']:.4g}",
         f"{t['values']['fitness.rac_weight']:.4g}", str(t["values"]["train_steps"]), f"{t['objective']:.4g}"]
        for t in stored]


def test_the_objective_figure_puts_every_trial_at_its_place_and_ends_at_the_runs_best(runs):
    trials = report_tune.tune_trials(runs.store.find_results("tune-tiny"))
    final = runs.store.get_generation("tune-tiny", 1)

    fig = report_plots.plot_trials(trials, report_tune.best_so_far([t["objective"] for t in trials]), "modes_hq")

    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[i + 1, t["objective"]] for i, t in
                                                                    enumerate(final["trials"])])
    assert ax.get_lines()[0].get_ydata()[-1] == final["best"]["objective"]


def test_the_searched_values_figure_has_one_panel_per_value_and_a_log_axis_for_a_log_range(runs):
    trials = report_tune.tune_trials(runs.store.find_results("tune-tiny"))
    space = spec_of(runs, "tune-tiny").tune.space

    fig = report_plots.plot_trial_values(trials, space, "modes_hq")

    panels = fig.axes[:3]  # then the colorbar's
    assert [ax.get_xlabel() for ax in panels] == ["meta.lr", "fitness.rac_weight", "train_steps"]
    assert [ax.get_xscale() for ax in panels] == ["log", "linear", "linear"]
    np.testing.assert_array_equal(panels[2].collections[0].get_offsets()[:, 0],
                                  [t["values"]["train_steps"] for t in trials])


def test_the_page_of_a_search_still_going_includes_the_trial_of_its_step_in_progress(runs):
    page = runs.page("tune-partial")

    assert "1/2 steps complete; 3 results stored" in page
    assert "Step 2 is in progress: 1 of its 2 trials are stored so far." in page
    assert page.count("<tr><td>") == 3


def test_a_swarm_page_counts_steps_and_particles_not_generations(runs):
    page = runs.page("pso-tiny")

    assert sections(page) == ["Fitness", "Training loss and accuracy", "Throughput", "Workers"]
    assert "3/3 steps complete; 12 results stored" in page
    assert "Per step, over its evaluated particles: best, mean" in page
    assert "The fittest particle of each step" in page and "generation" not in page.lower()


def test_the_swarms_loss_figure_is_labelled_by_pso_step():
    fig = report.plot_loss_and_accuracy({"x": [1, 2], "train_loss": [2.0, 1.0], "val_loss": [2.5, 2.4],
                                         "train_accuracy": [0.1, 0.2], "val_accuracy": [0.1, 0.1]}, by="PSO step")

    assert fig.axes[0].get_xlabel() == "PSO step"
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["PSO train", "PSO val"]


@pytest.mark.parametrize("name", ["pso-tiny", "tune-tiny", "tune-partial"])
def test_the_report_loads_in_chromium_with_no_error_and_every_image_drawn(runs, name):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", name, "--store", runs.url, "--out", str(runs.root / "reports")]) == 0

    seen = load(runs.root / "reports" / f"{name}.html")

    assert seen.errors == []
    assert len(seen.images) == len(images(runs.page(name))) > 0
    assert all(i["scheme"] == "data" and i["complete"] and i["naturalWidth"] > 0 for i in seen.images)
    assert pixel_variance(seen.screenshot) > 100.0
