"""`evoarena report`: the data behind each figure, the page of real runs, and the page in a real browser.

The runs are real and small, in this process (InlineExecutor) on one SQLite file shared by the
module: a tiny GA of 4 generations, the same GA stopped in the middle of its third generation
(a run that is still going), a tiny arena of 3 rounds and a tiny asynchronous fight.
"""

from __future__ import annotations

import contextlib
import copy
import html
import io
import math
import os
import re
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from evoarena.report import build as report
from evoarena import scheduler
from evoarena.cli.main import main
from evoarena.worker.inline import InlineExecutor
from evoarena.evolve.arena import Arena
from evoarena.problems import gan, gan_baselines, gan_data, gan_metrics, memorize
from evoarena.settings import Settings
from evoarena.spec.experiment import parse_spec
from evoarena.store import ARENA_COLLECTIONS, open_store
from evoarena.worker.worker import WorkerConfig
from headless_chromium import chromium, load
from helpers import StopAfter, images, mongomock_store, pixel_variance, sections, tiny_spec

ROOT = Path(__file__).resolve().parent.parent
ARENA = {
    "name": "arena-tiny",
    "problem": {"kind": "gan", "latent": 4, "metric_samples": 200,
                "data": {"kind": "ring", "train": 2000, "heldout": 500}},
    "arena": {"rounds": 3, "players": 2, "generators": 2, "discriminators": 2,
              "generator": {"hidden": [16]}, "discriminator": {"hidden": [16]},
              "train_steps": 20, "chunk_steps": 20, "cross_train_steps": 10, "batch_size": 32,
              "match_samples": 128, "match_block": 4,
              "variation": {"arch_rate": 1.0, "crossover_rate": 0.3, "meta_rate": 0.5}},
    "noise": {"size": 65536},
}
PARTIAL_TASKS = 2 * 7 + 3  # tiny.yaml: 7 individuals a generation; stopped 3 tasks into the third


def tiny_arena(name: str, **arena):
    data = copy.deepcopy(ARENA)
    data["name"] = name
    data["arena"].update(arena)
    return parse_spec(data)


class Runs:
    """The module's runs, all in one SQLite store, their checkpoints in one artifact directory; the GA
    "tiny" also has its Adam baseline (3 epochs) and "arena-tiny" its single-GAN baseline, both recorded
    by `evoarena baseline`."""

    def __init__(self, root: Path):
        self.root = root
        self.url = f"sqlite:///{root / 'results.db'}"
        self.store = open_store(self.url)
        self.settings = Settings(store=self.url, artifacts=str(root / "artifacts"), noise_dir=root / "noise")
        config = WorkerConfig(self.url, self.settings.artifacts, str(self.settings.noise_dir), threads=1)
        executor = InlineExecutor(config)
        scheduler.run(tiny_spec("tiny", generations=4), self.store, executor)
        with pytest.raises(KeyboardInterrupt):
            scheduler.run(tiny_spec("tiny-partial", generations=3), self.store, StopAfter(executor, PARTIAL_TASKS))
        scheduler.run(tiny_arena("arena-tiny"), self.store, executor)
        scheduler.run(tiny_arena("arena-fight", rounds=2, mode="async", cross_train_steps=0), self.store, executor)
        executor.close()
        with self.env(), contextlib.redirect_stdout(io.StringIO()) as printed:
            assert main(["baseline", str(ROOT / "experiments" / "tiny.yaml"), "--epochs", "3", "--store", self.url]) == 0
        self.baseline_printed = printed.getvalue()
        (root / "arena-tiny.yaml").write_text(yaml.safe_dump(ARENA))
        with self.env(), contextlib.redirect_stdout(io.StringIO()) as printed:
            assert main(["baseline", str(root / "arena-tiny.yaml"), "--store", self.url]) == 0
        self.gan_baseline_printed = printed.getvalue()

    def env(self):
        """The environment a command of these runs sees: their artifact store and noise tables."""
        return mock.patch.dict(os.environ, {"EVOARENA_ARTIFACTS": self.settings.artifacts,
                                            "EVOARENA_NOISE_DIR": str(self.settings.noise_dir)})

    def page(self, name: str) -> str:
        return report.build_page(self.store, name, self.settings, self.url)

    def write(self, name: str) -> Path:
        with self.env():
            assert main(["report", name, "--store", self.url, "--out", str(self.root / "reports")]) == 0
        return self.root / "reports" / f"{name}.html"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    runs = Runs(tmp_path_factory.mktemp("report"))
    yield runs
    runs.store.close()


# --- the data behind each figure --------------------------------------------------------------------


def test_fitness_band_is_best_mean_and_10th_to_90th_percentile_of_each_generation():
    band = report.fitness_band({2: [4.0, 2.0], 1: [float(v) for v in range(1, 11)]})

    assert band.x == [1, 2]
    assert band.best == [10.0, 4.0]
    assert band.mean == [5.5, 3.0]
    # linear interpolation between order statistics: 1 + 0.9 * (2 - 1), 9 + 0.1 * (10 - 9); 2 + 0.1 * 2, 2 + 0.9 * 2
    assert band.low == pytest.approx([1.9, 2.2])
    assert band.high == pytest.approx([9.1, 3.8])


def test_fitness_band_leaves_out_nan_values_and_generations_with_none_left():
    band = report.fitness_band({1: [math.nan, 1.0, 3.0], 2: [math.nan]})

    assert (band.x, band.best, band.mean) == ([1], [3.0], [2.0])
    assert band.low == pytest.approx([1.2]) and band.high == pytest.approx([2.8])


def test_ga_fitness_counts_generations_from_one_and_leaves_out_failed_evaluations():
    results = [{"op": "evaluate", "generation": 0, "fitness": -2.0}, {"op": "evaluate", "generation": 0, "fitness": -1.0},
               {"op": "evaluate", "generation": 1, "fitness": None, "error": "boom"},
               {"op": "evaluate", "generation": 1, "fitness": -0.5}]

    assert report.ga_fitness(results) == {1: [-2.0, -1.0], 2: [-0.5]}


def test_best_metrics_are_those_of_each_generations_fittest_individual():
    def result(generation, fitness, loss, _id):
        return {"_id": _id, "op": "evaluate", "generation": generation, "fitness": fitness,
                "metrics": {"train_loss": loss, "val_loss": loss + 1, "train_accuracy": 0.1 * loss, "val_accuracy": 0.0}}

    metrics = report.best_metrics([result(0, -3.0, 3.0, "a"), result(0, -2.0, 2.0, "b"), result(1, -1.0, 1.0, "c"),
                                   {"_id": "d", "op": "evaluate", "generation": 1, "fitness": None, "metrics": {}}])

    assert metrics == {"x": [1, 2], "train_loss": [2.0, 1.0], "val_loss": [3.0, 2.0],
                       "train_accuracy": [0.2, 0.1], "val_accuracy": [0.0, 0.0]}


def test_arena_fitness_takes_the_fitness_kind_of_each_rounds_generators():
    gens = [{"round": 0, "fitness_map": {"seed001": 0.25}}, {"round": 0, "fitness_map": {"seed001": 0.75}},
            {"round": 1, "fitness_map": {"seed001": None}}, {"round": 1, "fitness_map": {"seed001": 0.5}}]

    assert report.arena_fitness(gens, "seed001") == {1: [0.25, 0.75], 2: [0.5]}
    assert report.arena_fitness(gens, "elo") == {}


def test_fight_fitness_is_the_population_after_each_fight_without_those_that_have_not_fought():
    events = [{"done": 0, "members": [{"side": "gen"}, {"side": "disc"}]},
              {"done": 1, "members": [{"side": "gen", "fitness": 0.5}, {"side": "gen", "fitness": None},
                                      {"side": "disc", "fitness": 0.9}, {"side": "gen", "fitness": 0.1, "failed": True}]}]

    assert report.fight_fitness(events) == {0: [], 1: [0.5]}


def test_lineage_shares_are_each_founders_fraction_of_each_snapshot_largest_founder_first():
    x, founders, shares = report.lineage_shares({2: ["a", "a", "a", "b"], 1: ["a", "b", "c", "a"]})

    assert x == [1, 2]
    assert founders == ["a", "b", "c"]  # 5, 2 and 1 members over the run
    np.testing.assert_allclose(shares, [[0.5, 0.25, 0.25], [0.75, 0.25, 0.0]])


def test_generator_quality_collects_each_measure_per_round():
    gens = [{"round": 0, "quality": {"modes_covered": 3, "modes_covered@20": 2, "modes": 8, "high_quality": 0.5}},
            {"round": 0, "quality": {"modes_covered": 5, "modes_covered@20": 4, "modes": 8, "high_quality": 0.25}},
            {"round": 1, "quality": None}, {"round": 2, "quality": {"frechet": 12.5}}]

    assert report.generator_quality(gens) == {"modes_covered": {1: [3.0, 5.0]}, "modes_covered@20": {1: [2.0, 4.0]},
                                              "modes": {1: [8.0, 8.0]}, "high_quality": {1: [0.5, 0.25]},
                                              "frechet": {3: [12.5]}}


def test_a_quality_stored_before_the_strict_count_had_its_name_is_read_as_modes_covered_at_twenty():
    # until modes_covered@20 existed, "modes_covered" counted the modes with >= 20 high-quality samples
    gens = [{"round": 0, "quality": {"modes_covered": 6, "modes": 8, "high_quality": 0.5, "reverse_kl": 0.25}}]

    assert report.generator_quality(gens) == {"modes_covered@20": {1: [6.0]}, "modes": {1: [8.0]},
                                              "high_quality": {1: [0.5]}, "reverse_kl": {1: [0.25]}}


def test_a_gan_problem_stored_before_data_presets_reads_as_today_s_without_a_preset():
    stored = {"kind": "gan", "latent": 8, "metric_samples": 2500,
              "data": {"kind": "ring", "modes": 8, "radius": 2.0, "std": 0.02, "train": 20000, "heldout": 2500, "seed": 0}}

    assert report.problem_as_today(stored) == {**stored, "data": {**stored["data"], "preset": None}}


def test_network_sizes_are_smallest_median_and_largest_parameter_count_per_round():
    docs = [{"round": 0, "parameters": 300}, {"round": 0, "parameters": 100}, {"round": 0, "parameters": 200},
            {"round": 1, "parameters": 50}, {"round": 1, "parameters": 150}]

    assert report.network_sizes(docs) == {1: (100, 200.0, 300), 2: (50, 100.0, 150)}


def test_heatmap_rounds_are_all_rounds_up_to_the_limit():
    assert report.heatmap_rounds([3, 1, 2], limit=3) == [1, 2, 3]


def test_heatmap_rounds_past_the_limit_are_evenly_spaced_from_the_first_to_the_last():
    # positions 0, 29/3, 2*29/3, 29 of 30 rounds, rounded: 0, 10, 19, 29 (rounds 1, 11, 20, 30)
    assert report.heatmap_rounds(list(range(1, 31)), limit=4) == [1, 11, 20, 30]


def test_step_throughput_takes_the_steps_that_measured_hit_rate_and_speed():
    steps = [{"generation": 0, "stats": {"hit_rate": 0.0, "evals_per_s": 10.0, "seconds": 1.0}},
             {"generation": 1, "stats": {"best": 1.0}},  # an event of the asynchronous fight measures neither
             {"generation": 2, "stats": {"hit_rate": 0.75, "evals_per_s": 20.0, "seconds": 2.0}}]

    assert report.step_throughput(steps) == {"x": [1, 3], "hit_rate": [0.0, 0.75], "evals_per_s": [10.0, 20.0]}


def test_tasks_per_worker_counts_by_celery_node_then_process_and_lost_tasks_apart():
    results = [{"op": "evaluate", "node": "gpu0@a", "worker": "a-1"}, {"op": "evaluate", "node": "gpu0@a", "worker": "a-2"},
               {"op": "match", "node": None, "worker": "b-7"}, {"op": "evaluate", "node": None, "worker": None}]

    assert report.tasks_per_worker(results) == {"(lost)": Counter(evaluate=1), "b-7": Counter(match=1),
                                                "gpu0@a": Counter(evaluate=2)}


def test_encounter_matrix_greys_out_encounters_that_do_not_count_and_stars_liars():
    trace = {"gens": ["gen-aaaaaa11", "gen-bbbbbb22"], "discs": ["disc-cccccc33", "disc-dddddd44"],
             "matrix": [[0.1, 0.9], [0.4, 0.6]], "judged": [[False, True], [True, False]], "liars": [1]}

    fig = report.plot_encounter_matrix(trace, {"gen-aaaaaa11": 0, "gen-bbbbbb22": 1, "disc-cccccc33": 0}, "round 1")

    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(shown.mask, [[True, False], [False, True]])
    assert shown[0, 1] == 0.9 and shown[1, 0] == 0.4
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["p0 cccccc", "*? dddddd"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["p0 aaaaaa", "p1 bbbbbb"]


# --- the page of real runs ----------------------------------------------------------------------------


def test_ga_page_draws_fitness_loss_beside_the_adam_baseline_throughput_and_workers(runs):
    page = runs.page("tiny")

    assert sections(page) == ["Fitness", "Training loss and accuracy", "Throughput", "Workers"]
    assert images(page) == ["Fitness", "Training loss and accuracy", "Throughput", "Workers", "workers over time"]
    assert "the Adam baseline (orange, top axis: epochs; lr 0.001, seed 0)" in page
    assert "No Adam baseline is stored" not in page
    assert "4/4 generations complete; 28 results stored" in page
    assert {g: len(v) for g, v in report.ga_fitness(runs.store.find_results("tiny")).items()} == {1: 7, 2: 7, 3: 7, 4: 7}


def test_ga_page_without_a_stored_baseline_says_how_to_record_one(runs):
    page = runs.page("tiny-partial")

    assert ("No Adam baseline is stored for tiny-partial: `evoarena baseline FILE --store URL` trains one "
            "(100 epochs at lr 0.001) and records it here.") in page


# --- the Adam baseline ----------------------------------------------------------------------------------


def test_baseline_command_records_the_history_it_trained_and_printed(runs):
    spec = tiny_spec("tiny", generations=4)
    stored = runs.store.get_baseline("tiny", "adam")
    # the same training, run again here: Adam on the same network, data and seed
    again = memorize.baseline(spec.problem.model_dump(mode="json"), spec.network.model_dump(mode="json"), 3,
                              spec.baseline.lr, spec.seed)

    assert stored["history"] == again
    assert [r["epoch"] for r in stored["history"]] == [1, 2, 3]
    assert (stored["epochs"], stored["lr"], stored["seed"], stored["steps_per_epoch"]) == (3, 0.001, 0, 2)
    assert stored["problem"] == spec.problem.model_dump(mode="json")
    printed = [line for line in runs.baseline_printed.splitlines() if line.startswith("epoch")]
    assert [re.search(r"train loss (\S+)", line).group(1) for line in printed] == [
        f"{r['train_loss']:.3e}" for r in stored["history"]]
    assert runs.baseline_printed.splitlines()[-1] == (
        f"tiny: history recorded as the experiment's Adam baseline in {runs.url}")


def test_loss_figure_draws_the_stored_adam_history_against_epochs_on_a_second_axis(runs):
    history = runs.store.get_baseline("tiny", "adam")["history"]
    metrics = report.best_metrics(runs.store.find_results("tiny"))

    fig = report.plot_loss_and_accuracy(metrics, history, "GA work", "Adam work")

    loss, acc, loss_adam, acc_adam = fig.axes  # the two panels, then each one's twin (top x axis)
    assert [list(line.get_xdata()) for line in loss.get_lines()] == [[1, 2, 3, 4]] * 2
    assert [list(line.get_ydata()) for line in loss.get_lines()] == [metrics["train_loss"], metrics["val_loss"]]
    assert [list(line.get_xdata()) for line in loss_adam.get_lines()] == [[1, 2, 3]] * 2
    assert [list(line.get_ydata()) for line in loss_adam.get_lines()] == [
        [r["train_loss"] for r in history], [r["val_loss"] for r in history]]
    assert [list(line.get_ydata()) for line in acc_adam.get_lines()] == [
        [r["train_accuracy"] for r in history], [r["val_accuracy"] for r in history]]
    assert loss_adam.get_xlabel() == "Adam epoch (Adam work)" and loss.get_xlabel() == "GA generation\n(GA work)"


def test_a_stored_baseline_of_another_network_is_not_drawn_and_the_page_says_why(tmp_path, runs):
    spec = tiny_spec("tiny", generations=4)
    with open_store(f"sqlite:///{tmp_path / 'results.db'}") as store:
        store.put_experiment("tiny", runs.store.get_experiment("tiny"))
        store.put_results(runs.store.find_results("tiny"))
        other = {**runs.store.get_baseline("tiny", "adam"), "network": {**spec.network.model_dump(mode="json"),
                                                                        "hidden": [99]}}
        store.put_baseline("tiny", "adam", other)

        page = report.build_page(store, "tiny")

    assert "The stored Adam baseline is not drawn: its network differs from the experiment's" in html.unescape(page)
    assert "the Adam baseline (orange" not in page


def test_page_of_a_run_still_going_includes_the_generation_in_progress(runs):
    page = runs.page("tiny-partial")

    assert runs.store.get_experiment("tiny-partial")["status"] == "running"
    assert "2/3 generations complete; 17 results stored" in page
    assert "Generation 3 is in progress: the figures include the 3 results stored so far." in page
    assert report.fitness_band(report.ga_fitness(runs.store.find_results("tiny-partial"))).x == [1, 2, 3]


@pytest.mark.parametrize("spec, says", [
    (tiny_spec("fresh", generations=4), "0/4 generations complete; 0 results stored"),
    (tiny_arena("fresh"), "0/8 steps complete; 0 results stored"),
])
def test_page_of_a_run_with_nothing_stored_yet_says_so_and_draws_nothing(tmp_path, spec, says):
    with open_store(f"sqlite:///{tmp_path / 'results.db'}") as store:
        scheduler.register(spec, store)

        page = report.build_page(store, "fresh")

    assert images(page) == []
    assert says in page
    assert ("No evaluation is stored yet" if spec.algorithm == "ga" else "No match is stored yet") in page


def test_arena_page_has_one_encounter_matrix_and_one_samples_picture_per_round(runs):
    page = runs.page("arena-tiny")

    assert sections(page) == ["Fitness", "Encounter matrices", "Founding lineages", "Founding players",
                              "Generator quality", "Network sizes", "Generator samples", "Throughput", "Workers"]
    assert [alt for alt in images(page) if alt.startswith("encounter")] == [
        "encounter matrix, round 1", "encounter matrix, round 2", "encounter matrix, round 3"]
    assert [alt for alt in images(page) if alt.startswith("samples")] == [
        "samples, round 1", "samples, round 2", "samples, round 3"]
    assert 'class="note"' not in page


def test_gan_baseline_command_records_a_single_gans_quality_at_the_arenas_steps_of_each_round(runs):
    stored = runs.store.get_baseline("arena-tiny", "single_gan")
    spec = tiny_arena("arena-tiny")

    # a lineage trains 20 train_pair steps a round, and 10 cross-train steps between rounds
    assert [(r["round"], r["steps"]) for r in stored["rounds"]] == [(1, 20), (2, 50), (3, 80)]
    # round 1 on its own: one pair of the founders' architectures, 20 steps in one chunk, measured on
    # metric_samples samples drawn with the experiment's seed
    arena = Arena(spec)
    g_arch, g_flat = gan_baselines.single_gan(spec.problem.model_dump(mode="json"), arena.founding_arch("gen"),
                                              arena.founding_arch("disc"), arena.founding_meta("gen"), 20,
                                              spec.arena.batch_size, spec.seed, chunk=20)
    data = spec.problem.data.model_dump(mode="json")
    samples = gan.generate(g_arch, g_flat, 200, torch.Generator().manual_seed(spec.seed))
    assert stored["rounds"][0]["quality"] == gan_metrics.mixture_quality(samples, gan_data.mixture_centres(data),
                                                                         data["std"])
    printed = runs.gan_baseline_printed.splitlines()
    assert [line.split()[:4] for line in printed[1:4]] == [["round", "1", "steps", "20"], ["round", "2", "steps", "50"],
                                                           ["round", "3", "steps", "80"]]


def test_quality_figure_draws_the_single_gan_baseline_dashed_per_round(runs):
    reference, why_not = report.single_gan_baseline(runs.store, tiny_arena("arena-tiny"))
    stored = runs.store.get_baseline("arena-tiny", "single_gan")["rounds"]

    fig = report.plot_quality(report.generator_quality(runs.store.find_docs("pure_gen", "arena-tiny")), 8, "round",
                              reference)

    assert why_not is None
    modes, modes_at_20, high_quality = fig.axes
    for ax, key in ((modes, "modes_covered"), (modes_at_20, "modes_covered@20")):
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert [list(line.get_xdata()) for line in dashed] == [[1, 2, 3]]
        assert list(dashed[0].get_ydata()) == [float(r["quality"][key]) for r in stored]
    assert [line.get_label() for line in high_quality.get_lines()][-1] == "single GAN, same gradient steps"
    assert "Dashed: the single-GAN baseline" in runs.page("arena-tiny")


def test_a_single_gan_baseline_of_other_training_steps_is_not_drawn_and_the_page_says_why(runs):
    longer = tiny_arena("arena-tiny", train_steps=40)

    reference, why_not = report.single_gan_baseline(runs.store, longer)

    assert reference is None
    assert why_not == ("The stored single-GAN baseline is not drawn: its train_steps differs from the experiment's; "
                       "run `evoarena baseline` on this experiment's file again.")


def picture(page: str, alt: str) -> np.ndarray:
    """The pixels of the page's image `alt`."""
    import base64

    chunk = next(c for c in page.split('<img src="data:image/png;base64,')[1:] if f'alt="{alt}"' in c)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(chunk.split('"', 1)[0]))))


@pytest.mark.parametrize("round", [1, 2, 3])
def test_a_rounds_samples_picture_is_what_evoarena_sample_draws_of_that_rounds_best_generator(runs, round, tmp_path):
    # the round's best generator, from its pure_gen docs: the highest fitness, the smallest member id on ties
    gens = runs.store.find_docs("pure_gen", "arena-tiny", round=round - 1)
    best = min(gens, key=lambda d: (-d["fitness_map"]["seed001"], d["member"]))
    out = tmp_path / "sample.png"
    with runs.env(), contextlib.redirect_stdout(io.StringIO()):
        assert main(["sample", "arena-tiny", "--genome", best["genome_id"], "--seed", "0", "--out", str(out),
                     "--store", runs.url]) == 0

    drawn = picture(runs.page("arena-tiny"), f"samples, round {round}")

    np.testing.assert_array_equal(drawn, np.asarray(Image.open(out)))
    assert f"round {round}: generator {best['member']} (genome {best['genome_id']})" in runs.page("arena-tiny")


def test_samples_pictures_of_an_unreachable_artifact_store_are_replaced_by_a_note_each(runs, tmp_path):
    elsewhere = Settings(store=runs.url, artifacts=str(tmp_path / "not-the-runs-artifacts"), noise_dir=tmp_path / "noise")

    page = report.build_page(runs.store, "arena-tiny", elsewhere, runs.url)

    assert [alt for alt in images(page) if alt.startswith("samples")] == []
    notes = re.findall(r"samples, round (\d) not drawn: the weights of (gen-\w+) could not be built from the "
                       r"artifact store " + re.escape(str(tmp_path / "not-the-runs-artifacts")), page)
    assert [r for r, _ in notes] == ["1", "2", "3"]
    assert "Encounter matrices" in sections(page)  # the rest of the page stands


def test_a_page_built_without_an_artifact_store_says_samples_are_not_drawn(runs):
    page = report.build_page(runs.store, "arena-tiny")

    assert [alt for alt in images(page) if alt.startswith("samples")] == []
    assert "Not drawn: this page was built without the artifact store" in page


def test_samples_are_drawn_for_at_most_eight_rounds_evenly_spaced():
    assert report.heatmap_rounds(list(range(1, 21)), report.MAX_SAMPLE_PICTURES) == [1, 4, 6, 9, 12, 15, 17, 20]


def test_workers_per_step_counts_distinct_workers_and_not_lost_tasks():
    results = [{"generation": 0, "node": "a@x", "worker": "x-1"}, {"generation": 0, "node": "a@x", "worker": "x-2"},
               {"generation": 0, "node": "b@y", "worker": "y-1"}, {"generation": 1, "node": None, "worker": "x-9"},
               {"generation": 1, "node": None, "worker": None}, {"generation": 2, "node": None, "worker": None}]

    assert report.workers_per_step(results) == {1: 2, 2: 1, 3: 0}


def test_descent_by_player_follows_each_lineage_to_its_founders_player_across_migration():
    spec = tiny_arena("arena-tiny")
    gens = [{"round": 0, "member": "gen-a", "lineage": "gen-a", "player": 0},
            {"round": 0, "member": "gen-b", "lineage": "gen-b", "player": 1},
            {"round": 1, "member": "gen-c", "lineage": "gen-a", "player": 1},  # a child of player 0's founder, migrated
            {"round": 1, "member": "gen-d", "lineage": "gen-a", "player": 0}]
    discs = [{"round": 0, "member": "disc-a", "lineage": "disc-a", "player": 1}]

    shares = report.founding_lineages(spec, [], gens, discs, by="player")

    x, players, gen_shares = shares["generators"]
    assert (x, players) == ([1, 2], ["player 0", "player 1"])
    np.testing.assert_allclose(gen_shares, [[0.5, 0.5], [1.0, 0.0]])
    assert shares["discriminators"][1] == ["player 1"]


def test_arena_founding_lineages_start_one_member_per_founder_and_each_round_sums_to_one(runs):
    store, spec = runs.store, tiny_arena("arena-tiny")
    gens, discs = store.find_docs("pure_gen", "arena-tiny"), store.find_docs("pure_disc", "arena-tiny")

    lineages = report.founding_lineages(spec, store.list_generations("arena-tiny"), gens, discs)

    for side in ("generators", "discriminators"):
        x, founders, shares = lineages[side]
        assert x == [1, 2, 3]
        assert len(founders) == 4  # 2 players x 2 members of each side, each its own founder
        np.testing.assert_allclose(sorted(shares[0]), [0.25] * 4)
        np.testing.assert_allclose(shares.sum(axis=1), [1.0, 1.0, 1.0])


def test_arena_descent_by_player_starts_half_each_and_each_round_sums_to_one(runs):
    store, spec = runs.store, tiny_arena("arena-tiny")
    gens, discs = store.find_docs("pure_gen", "arena-tiny"), store.find_docs("pure_disc", "arena-tiny")

    shares = report.founding_lineages(spec, store.list_generations("arena-tiny"), gens, discs, by="player")

    for side in ("generators", "discriminators"):
        x, players, by_player = shares[side]
        assert x == [1, 2, 3] and sorted(players) == ["player 0", "player 1"]
        np.testing.assert_allclose(by_player[0], [0.5, 0.5])  # 2 founders of each side per player
        np.testing.assert_allclose(by_player.sum(axis=1), [1.0, 1.0, 1.0])


def test_fight_page_is_drawn_per_fight(runs):
    page = runs.page("arena-fight")
    last = runs.store.list_generations("arena-fight")[-1]

    assert f"{last['done']}/{last['budget']} fights" in page
    drawn = [alt for alt in images(page) if alt.startswith("encounter")]
    assert drawn and all(alt.startswith("encounter matrix, fight ") for alt in drawn)


def test_page_from_a_mongodb_store_draws_the_same_figures_as_from_sqlite(runs, tmp_path):
    name = "arena-tiny"
    with mongomock_store(tmp_path) as mongo:
        mongo.put_experiment(name, runs.store.get_experiment(name))
        mongo.put_results(runs.store.find_results(name))
        for doc in runs.store.list_generations(name):
            mongo.put_generation(name, doc["generation"], doc)
        for collection in ARENA_COLLECTIONS:
            mongo.put_docs(collection, runs.store.find_docs(collection, name))
        mongo.put_baseline(name, "single_gan", runs.store.get_baseline(name, "single_gan"))

        from_mongo = report.build_page(mongo, name, runs.settings, runs.url)

    def figures(page: str) -> list[str]:
        return [chunk.split('"', 1)[0] for chunk in page.split('<img src="')[1:]]

    assert figures(from_mongo) == figures(runs.page(name))


# --- the command --------------------------------------------------------------------------------------


def test_report_command_writes_name_html_in_out_dir(runs, capsys):
    path = runs.write("tiny")

    assert path.read_text().startswith("<!DOCTYPE html>")
    assert capsys.readouterr().out == f"tiny: report written to {path}\n"


def test_report_of_an_unknown_experiment_exits_2_with_one_line_naming_the_known_ones(runs, capsys):
    assert main(["report", "nope", "--store", runs.url, "--out", str(runs.root / "reports")]) == 2

    err = capsys.readouterr().err
    assert err == "error: no experiment 'nope' in the store; known: arena-fight, arena-tiny, tiny, tiny-partial\n"
    assert not (runs.root / "reports" / "nope.html").exists()


# --- in a real browser --------------------------------------------------------------------------------


def test_chromium_is_installed():
    assert Path(chromium()).exists()


def test_a_blank_page_screenshot_has_no_pixel_variance(tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")

    assert pixel_variance(load(blank).screenshot) == 0.0


def test_the_browser_check_catches_console_errors_exceptions_and_images_that_do_not_load(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><img src="missing.png">'
                      '<script>console.error("boom"); notAFunction()</script></body></html>')

    seen = load(broken)

    assert "console: boom" in seen.errors
    assert any(e.startswith("exception: ReferenceError: notAFunction is not defined") for e in seen.errors)
    assert "failed to load: net::ERR_FILE_NOT_FOUND" in seen.errors
    assert seen.images == [{"scheme": "file", "complete": True, "naturalWidth": 0, "naturalHeight": 0}]


@pytest.mark.parametrize("name", ["tiny", "tiny-partial", "arena-tiny", "arena-fight"])
def test_report_loads_in_chromium_with_no_error_every_image_drawn_and_nothing_fetched(runs, name):
    seen = load(runs.write(name))

    assert seen.errors == []
    assert len(seen.images) == len(images(runs.page(name))) > 0
    for image in seen.images:
        assert image["scheme"] == "data" and image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0
    assert {url.split(":", 1)[0] for url in seen.requests} <= {"file", "data"}
    assert pixel_variance(seen.screenshot) > 100.0


# --- the layout, as a reader sees it ------------------------------------------------------------------


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("figure", ["lineages", "players", "sizes", "quality"])
def test_no_legend_covers_the_data_of_its_axes(runs, figure):
    store, spec = runs.store, tiny_arena("arena-tiny")
    steps = store.list_generations("arena-tiny")
    gens, discs = store.find_docs("pure_gen", "arena-tiny"), store.find_docs("pure_disc", "arena-tiny")
    fig = {"lineages": lambda: report.plot_lineage_shares(report.founding_lineages(spec, steps, gens, discs), "round"),
           "players": lambda: report.plot_lineage_shares(report.founding_lineages(spec, steps, gens, discs, by="player"),
                                                         "round", by="player"),
           "sizes": lambda: report.plot_network_sizes({"generators": report.network_sizes(gens),
                                                       "discriminators": report.network_sizes(discs)}, "round"),
           "quality": lambda: report.plot_quality(report.generator_quality(gens), 8, "round",
                                                  picked=report.picked_quality(steps, fight=False))}[figure]()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not any(overlaps(box, ax.get_window_extent(renderer)) for ax in fig.axes), figure
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 + 1 and fig.bbox.y0 <= box.y0  # and not cut off


def test_founding_players_have_the_same_colour_in_the_generators_and_the_discriminators_panels(runs):
    store, spec = runs.store, tiny_arena("arena-tiny")
    gens, discs = store.find_docs("pure_gen", "arena-tiny"), store.find_docs("pure_disc", "arena-tiny")
    shares = report.founding_lineages(spec, store.list_generations("arena-tiny"), gens, discs, by="player")
    shares["discriminators"] = (shares["discriminators"][0], shares["discriminators"][1][::-1],  # another order
                                shares["discriminators"][2][:, ::-1])

    fig = report.plot_lineage_shares(shares, "round", by="player")

    colours = [{label: handle.patches[0].get_facecolor() for handle, label in zip(*ax.get_legend_handles_labels())}
               for ax in fig.axes]
    assert set(colours[0]) == set(colours[1]) == {"player 0", "player 1"}
    assert colours[0] == colours[1]


def test_the_quality_figure_draws_the_arenas_pick_and_the_best_of_all_labelled_as_such(runs):
    steps = runs.store.list_generations("arena-tiny")
    matches = [s for s in steps if s["phase"] == "match"]

    fig = report.plot_quality(report.generator_quality(runs.store.find_docs("pure_gen", "arena-tiny")), 8, "round",
                              picked=report.picked_quality(steps, fight=False))

    modes = fig.axes[0]
    lines = {line.get_label(): line for line in modes.get_lines()}
    assert {"the arena's pick (best fitness)", "best of all generators", "mean"} <= set(lines)
    pick = lines["the arena's pick (best fitness)"]
    assert list(pick.get_xdata()) == [s["round"] + 1 for s in matches]
    assert list(pick.get_ydata()) == [s["stats"]["best_quality"]["modes_covered"] for s in matches]
    assert "the arena's pick (its best generator by fitness" in html.unescape(runs.page("arena-tiny"))


def test_the_header_says_how_long_the_run_took(runs):
    seconds = sum(s["stats"]["seconds"] for s in runs.store.list_generations("arena-tiny"))

    page = runs.page("arena-tiny")

    assert f"<tr><th>duration</th><td>{report.duration_text(seconds)} over " in page
    assert (report.duration_text(41.2), report.duration_text(725), report.duration_text(12_000)) == (
        "41 s", "12 min 5 s", "3 h 20 min")


def test_the_arena_page_lays_out_the_rounds_pictures_in_a_grid_in_chromium(runs, tmp_path):
    seen = load(runs.write("arena-tiny"), width=1200, full_page=True)
    (tmp_path / "arena-tiny.png").write_bytes(seen.screenshot)  # to look at: the page as a reader sees it

    assert seen.errors == []
    samples = [box for box in seen.boxes if box["alt"].startswith("samples, round")]
    assert len(samples) == 3 and len({box["y"] for box in samples}) == 1  # one row, side by side
    assert all(box["width"] <= 600 for box in samples)
    matrices = [box for box in seen.boxes if box["alt"].startswith("encounter matrix")]
    assert len({box["y"] for box in matrices}) == 1
    for box in seen.boxes:  # every figure within the page's width
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1200
    # the rounds' pictures take one row's height, not one picture's height per round
    assert max(b["y"] + b["height"] for b in samples) - min(b["y"] for b in samples) <= max(b["height"] for b in samples)
    quality = [box for box in seen.boxes if box["alt"] == "Generator quality"]
    assert quality and quality[0]["width"] >= 800  # its panels two a row: readable, not a strip shrunk to the page
    assert pixel_variance(seen.screenshot) > 100.0
