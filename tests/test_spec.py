"""The experiment spec: what a YAML file may say, and the one-line error when it says it wrong."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ValidationError

from evoarena.spec.experiment import (
    ExperimentSpec,
    SpecError,
    load_spec,
    parameter_count,
    parse_spec,
    spec_to_dict,
    validate_name,
)

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

MINIMAL = "name: minimal\nga:\n  generations: 3\n"


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


# Each case: a bad file, and what its error line must contain: the field path, the value as
# written, and what would be accepted.
BAD_FILES = {
    "unknown top-level key": (
        "name: x\ngenerations: 5\nga: {generations: 1}\n",
        "generations: unknown field; accepted: name, seed, problem, network, ga,",
    ),
    "misspelt ga key": (
        "name: x\nga: {generations: 1, sigmaa: 0.1}\n",
        "ga.sigmaa: unknown field; accepted: generations, parents, children_per_parent,",
    ),
    "unknown conv key": (
        "name: x\nnetwork: {convs: [{channels: 4, kernel: 3, padding: 1}]}\nga: {generations: 1}\n",
        "network.convs[0].padding: unknown field; accepted: channels, kernel, stride",
    ),
    "unknown problem key": (
        "name: x\nproblem: {kind: memorize, imag: [3, 8, 8]}\nga: {generations: 1}\n",
        "problem.imag: unknown field; accepted: kind, image, classes,",
    ),
    "missing generations": (
        "name: x\nga: {parents: 2}\n",
        "ga.generations: required field missing",
    ),
    "missing name": ("ga: {generations: 1}\n", "name: required field missing"),
    "missing ga": ("name: x\n", "ga: required field missing"),
    "name with capitals": (
        "name: Memorize_1\nga: {generations: 1}\n",
        "name = 'Memorize_1': must be a DNS-1123 label",
    ),
    "name too long": (
        f"name: {'a' * 54}\nga: {{generations: 1}}\n",
        "is 54 characters; at most 53 are accepted",
    ),
    "name not a string": (
        "name: 123\nga: {generations: 1}\n",
        "name = 123: must be a valid string",
    ),
    "negative seed": (
        "name: x\nseed: -1\nga: {generations: 1}\n",
        "seed = -1: must be greater than or equal to 0",
    ),
    "generations a yes": (
        "name: x\nga: {generations: yes}\n",
        "ga.generations = True: must be a valid integer",
    ),
    "quoted sigma": (
        "name: x\nga: {generations: 1, mutation: {sigma: '0.1'}}\n",
        "ga.mutation.sigma = '0.1': must be a valid number",
    ),
    "zero generations": (
        "name: x\nga: {generations: 0}\n",
        "ga.generations = 0: must be greater than or equal to 1",
    ),
    "fractional generations": (
        "name: x\nga: {generations: 2.5}\n",
        "ga.generations = 2.5: must be a valid integer",
    ),
    "ga not a mapping": (
        "name: x\nga: 5\n",
        "ga = 5: must be a mapping with fields: generations, parents,",
    ),
    "negative sigma": (
        "name: x\nga: {generations: 1, mutation: {sigma: -1}}\n",
        "ga.mutation.sigma = -1: must be greater than 0",
    ),
    "negative tau": (
        "name: x\nga: {generations: 1, mutation: {kind: adaptive, tau: -0.1}}\n",
        "ga.mutation.tau = -0.1: must be greater than or equal to 0",
    ),
    "unknown mutation kind": (
        "name: x\nga: {generations: 1, mutation: {kind: gausian}}\n",
        "ga.mutation.kind = 'gausian': must be one of 'gaussian', 'layer', 'norm' or 'adaptive'",
    ),
    "crossover rate above 1": (
        "name: x\nga: {generations: 1, parents: 2, crossover_rate: 1.5}\n",
        "ga.crossover_rate = 1.5: must be less than or equal to 1",
    ),
    "more elites than parents": (
        "name: x\nga: {generations: 1, parents: 2, elites: 3}\n",
        "ga.elites = 3: must be at most ga.parents (2)",
    ),
    "crossover with one parent": (
        "name: x\nga: {generations: 1, crossover_rate: 0.5}\n",
        "ga.crossover_rate = 0.5: needs ga.parents >= 2",
    ),
    "zero initial population": (
        "name: x\nga: {generations: 1, initial_population: 0}\n",
        "ga.initial_population = 0: must be greater than or equal to 1",
    ),
    "unknown problem kind": (
        "name: x\nproblem: {kind: mujoco}\nga: {generations: 1}\n",
        "problem.kind = 'mujoco': must be one of 'memorize', 'atari', 'gan'",
    ),
    "gan problem under a GA": (
        "name: x\nproblem: {kind: gan, data: {kind: ring}}\nga: {generations: 1}\n",
        "problem.kind = 'gan': a GA runs the memorize or atari problem; a gan problem needs arena:",
    ),
    "arena on the memorize problem": (
        "name: x\narena: {rounds: 2}\n",
        "problem.kind = 'memorize': an arena needs a gan problem",
    ),
    "arena with an unknown data kind": (
        "name: x\nproblem: {kind: gan, data: {kind: spiral}}\narena: {rounds: 2}\n",
        "problem.data.kind = 'spiral': must be one of 'ring', 'grid', 'digits', 'npz', 'mnist'",
    ),
    "npz without a checksum": (
        "name: x\nproblem: {kind: gan, data: {kind: npz, uri: x.npz}}\narena: {rounds: 2}\n",
        "problem.data.sha256: required field missing",
    ),
    "problem without kind": (
        "name: x\nproblem: {classes: 4}\nga: {generations: 1}\n",
        "problem.kind: required field missing; accepted: 'memorize'",
    ),
    "image with two sides": (
        "name: x\nproblem: {kind: memorize, image: [3, 64]}\nga: {generations: 1}\n",
        "problem.image = [3, 64]: must be a list of 3 items",
    ),
    "image not a list": (
        "name: x\nproblem: {kind: memorize, image: 64}\nga: {generations: 1}\n",
        "problem.image = 64: must be a list of 3 items",
    ),
    "image with four sides": (
        "name: x\nproblem: {kind: memorize, image: [3, 64, 64, 1]}\nga: {generations: 1}\n",
        "problem.image = [3, 64, 64, 1]: must have at most 3 items",
    ),
    "image side zero": (
        "name: x\nproblem: {kind: memorize, image: [3, 0, 64]}\nga: {generations: 1}\n",
        "problem.image[1] = 0: must be greater than or equal to 1",
    ),
    "one class": (
        "name: x\nproblem: {kind: memorize, classes: 1}\nga: {generations: 1}\n",
        "problem.classes = 1: must be greater than or equal to 2",
    ),
    "zero kernel": (
        "name: x\nnetwork: {convs: [{channels: 4, kernel: 3}, {channels: 4, kernel: 0}]}\n"
        "ga: {generations: 1}\n",
        "network.convs[1].kernel = 0: must be greater than or equal to 1",
    ),
    "zero hidden width": (
        "name: x\nnetwork: {hidden: [64, 0]}\nga: {generations: 1}\n",
        "network.hidden[1] = 0: must be greater than or equal to 1",
    ),
    "convs too deep for the image": (
        "name: x\nproblem: {kind: memorize, image: [3, 16, 16]}\nga: {generations: 1}\n",
        "network.convs[1].kernel = 4: does not fit the 3x3 input this conv gets from a 3x16x16",
    ),
    "noise table too small": (
        "name: x\nnoise: {size: 65536}\nga: {generations: 1}\n",
        "noise.size = 65536: must be at least 2x the network's 605866 parameters (1211732)",
    ),
    "noise table too large": (
        "name: x\nnoise: {size: 4294967296}\nga: {generations: 1}\n",
        "noise.size = 4294967296: must be less than or equal to 2147483648",
    ),
    "unknown executor": (
        "name: x\nexecutor: {kind: k8s}\nga: {generations: 1}\n",
        "executor.kind = 'k8s': must be one of 'local' or 'celery'",
    ),
    "zero cache": (
        "name: x\nexecutor: {cache_mb: 0}\nga: {generations: 1}\n",
        "executor.cache_mb = 0: must be greater than or equal to 1",
    ),
    "zero learning rate": (
        "name: x\nbaseline: {lr: 0}\nga: {generations: 1}\n",
        "baseline.lr = 0: must be greater than 0",
    ),
    "infinite sigma": (
        "name: x\nga: {generations: 1, mutation: {sigma: .inf}}\n",
        "ga.mutation.sigma = inf: must be a finite number",
    ),
}


@pytest.mark.parametrize("text, expected", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_file_is_one_line_naming_the_field_value_and_remedy(tmp_path, text, expected):
    assert expected in load_error(tmp_path, text)


def test_the_whole_error_line_reads_path_field_value_reason(tmp_path):
    path = write(tmp_path, "name: x\nga: {generations: 1, mutation: {sigma: -1}}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: ga.mutation.sigma = -1: must be greater than 0"
    assert (caught.value.field, caught.value.value) == ("ga.mutation.sigma", "-1")


def test_only_the_first_of_several_errors_is_reported(tmp_path):
    message = load_error(tmp_path, "name: x\nseed: -1\nga: {generations: 0}\n")
    assert "seed = -1" in message
    assert "ga.generations" not in message


def test_a_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="nowhere.yaml: file not found"):
        load_spec(tmp_path / "nowhere.yaml")


def test_a_yaml_syntax_error_names_its_line(tmp_path):
    message = load_error(tmp_path, "name: x\nga:\n  generations: [1\n  parents: 2\nnoise: }\n")
    assert "invalid YAML: line " in message


@pytest.mark.parametrize("text", ["- name: x\n", "just a string\n", ""])
def test_the_top_level_must_be_a_mapping(tmp_path, text):
    assert "the top level must be a mapping" in load_error(tmp_path, text)


def test_parse_spec_names_its_source():
    with pytest.raises(SpecError, match=r"^from-db: ga\.parents = 0: "):
        parse_spec({"name": "x", "ga": {"generations": 1, "parents": 0}}, source="from-db")


def test_spec_error_survives_pickling():
    error = SpecError("a.yaml", "ga.parents", "must be greater than or equal to 1", "0")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_a_minimal_file_gets_the_documented_defaults(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL, "minimal.yaml"))

    assert (spec.name, spec.seed, spec.description) == ("minimal", 0, "")
    problem = spec.problem
    assert problem.kind == "memorize"
    assert problem.image == (3, 64, 64)
    assert (problem.classes, problem.batch_size) == (10, 32)
    assert (problem.train_batches, problem.val_batches, problem.data_seed) == (16, 2, 0)
    convs = [(c.channels, c.kernel, c.stride) for c in spec.network.convs]
    assert convs == [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
    assert spec.network.hidden == [512]
    ga = spec.ga
    assert (ga.generations, ga.parents, ga.children_per_parent, ga.elites) == (3, 1, 16, 1)
    assert (ga.mutation.kind, ga.mutation.sigma, ga.mutation.tau) == ("gaussian", 0.02, 0.1)
    assert (ga.crossover_rate, ga.initial_population, ga.checkpoint_every) == (0.0, None, 0)
    assert (spec.noise.seed, spec.noise.size) == (1234, 2**24)
    assert (spec.executor.kind, spec.executor.workers, spec.executor.cache_mb) == ("local", 2, 512)
    assert (spec.baseline.epochs, spec.baseline.lr) == (100, 1e-3)


def test_population_is_children_plus_elites():
    ga = {"generations": 1, "parents": 8, "children_per_parent": 4}
    spec = parse_spec({"name": "x", "ga": ga})
    assert spec.ga.population == 8 * 4 + 1
    assert spec.ga.generation_zero_size == 33


def test_initial_population_sets_generation_zero_only():
    ga = {"generations": 1, "initial_population": 1000}
    spec = parse_spec({"name": "x", "ga": ga})
    assert (spec.ga.generation_zero_size, spec.ga.population) == (1000, 17)


def test_a_loaded_spec_cannot_be_changed():
    spec = parse_spec({"name": "x", "ga": {"generations": 1}})
    with pytest.raises(ValidationError, match="frozen"):
        spec.ga.generations = 2


def test_parameter_count_matches_the_torch_network_it_describes():
    spec = load_spec(EXPERIMENTS / "memorize.yaml")
    layers, channels = [], spec.problem.image[0]
    for conv in spec.network.convs:
        layers.append(torch.nn.Conv2d(channels, conv.channels, conv.kernel, conv.stride))
        channels = conv.channels
    layers.append(torch.nn.Flatten())
    features = torch.nn.Sequential(*layers)(torch.zeros(1, *spec.problem.image)).shape[1]
    for width in [*spec.network.hidden, spec.problem.classes]:
        layers.append(torch.nn.Linear(features, width))
        features = width
    torch_count = sum(p.numel() for p in torch.nn.Sequential(*layers).parameters())
    assert parameter_count(spec.problem.image, spec.problem.classes, spec.network) == torch_count
    assert torch_count == 605_866


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_experiment_file_loads_and_round_trips(path):
    spec = load_spec(path)
    stored = json.loads(json.dumps(spec_to_dict(spec)))
    assert parse_spec(stored) == spec


def test_the_shipped_experiments_say_what_their_names_promise():
    one, eight, sexual, tiny = (
        load_spec(EXPERIMENTS / f"{n}.yaml")
        for n in ("memorize", "memorize-8x4", "memorize-sexual", "tiny")
    )
    assert (one.name, one.ga.parents, one.ga.children_per_parent, one.ga.population) == (
        "memorize-1x16", 1, 16, 17
    )
    assert (eight.ga.parents * eight.ga.children_per_parent, eight.ga.elites) == (32, 1)
    assert (sexual.ga.parents, sexual.ga.crossover_rate) == (8, 0.5)
    assert (tiny.problem.image, tiny.noise.size, tiny.executor.workers) == ((3, 16, 16), 65536, 1)


def test_the_round_trip_keeps_every_default():
    spec = parse_spec({"name": "x", "ga": {"generations": 1}})
    stored = spec_to_dict(spec)
    assert stored["problem"]["image"] == [3, 64, 64]
    assert parse_spec(stored) == spec


def test_every_field_is_documented_in_one_line():
    def models(model):
        yield model
        for field in model.model_fields.values():
            for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    yield from models(candidate)

    for model in models(ExperimentSpec):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            assert "\n" not in field.description, f"{model.__name__}.{name}"


def test_validate_name_accepts_a_dns_label_and_explains_a_bad_one():
    assert validate_name("memorize-8x4") == "memorize-8x4"
    with pytest.raises(ValueError, match="'-memorize' .*DNS-1123"):
        validate_name("-memorize")
    with pytest.raises(ValueError, match="at most 53"):
        validate_name("a" * 54)


# --- GAN data presets: the published benchmarks by name -----------------------------------------


def arena_with(data: dict) -> dict:
    return {"name": "x", "problem": {"kind": "gan", "data": data}, "arena": {"rounds": 1}}


def data_of(data: dict) -> dict:
    """The data section of the parsed spec, as a run stores it."""
    return spec_to_dict(parse_spec(arena_with(data)))["problem"]["data"]


@pytest.mark.parametrize("data, expected", [
    ({"kind": "ring", "preset": "pacgan"},  # PacGAN (Lin et al. 2018): radius 1, std 0.01
     {"kind": "ring", "preset": "pacgan", "modes": 8, "radius": 1.0, "std": 0.01, "train": 100000, "heldout": 2500,
      "seed": 0}),
    ({"kind": "ring", "preset": "veegan"},  # VEEGAN (Srivastava et al. 2017): radius 2, std 0.02
     {"kind": "ring", "preset": "veegan", "modes": 8, "radius": 2.0, "std": 0.02, "train": 100000, "heldout": 2500,
      "seed": 0}),
    ({"kind": "grid", "preset": "pacgan"},  # the grid of 25 of both papers
     {"kind": "grid", "preset": "pacgan", "side": 5, "spacing": 2.0, "std": 0.05, "train": 100000, "heldout": 2500,
      "seed": 0}),
    ({"kind": "grid", "preset": "veegan"},
     {"kind": "grid", "preset": "veegan", "side": 5, "spacing": 2.0, "std": 0.05, "train": 100000, "heldout": 2500,
      "seed": 0}),
], ids=["ring-pacgan", "ring-veegan", "grid-pacgan", "grid-veegan"])
def test_a_preset_gives_the_published_benchmark_s_values(data, expected):
    assert data_of(data) == expected


def test_a_field_given_beside_a_preset_wins_over_the_preset():
    data = data_of({"kind": "ring", "preset": "pacgan", "std": 0.05, "train": 5000, "seed": 3})
    assert (data["modes"], data["radius"], data["std"], data["train"], data["seed"]) == (8, 1.0, 0.05, 5000, 3)


def test_without_a_preset_a_mixture_keeps_today_s_defaults():
    assert data_of({"kind": "ring"}) == {"kind": "ring", "preset": None, "modes": 8, "radius": 2.0, "std": 0.02,
                                         "train": 20000, "heldout": 2500, "seed": 0}


def test_an_unknown_preset_is_a_spec_error_naming_the_field_and_the_accepted_names():
    with pytest.raises(SpecError) as caught:
        parse_spec(arena_with({"kind": "ring", "preset": "wgan"}))
    assert str(caught.value) == "<spec>: problem.data.preset = 'wgan': must be one of 'pacgan' or 'veegan'"


def test_a_stored_spec_with_a_preset_parses_back_to_the_same_spec():
    spec = parse_spec(arena_with({"kind": "grid", "preset": "pacgan", "std": 0.1}))
    assert parse_spec(spec_to_dict(spec)) == spec


def test_a_mixture_stored_before_presets_existed_parses_as_the_same_data_without_one():
    stored = {"kind": "grid", "side": 5, "spacing": 2.0, "std": 0.05, "train": 20000, "heldout": 2500, "seed": 0}
    assert data_of(stored) == {**stored, "preset": None}


def test_each_algorithm_says_once_how_long_its_run_is_and_what_a_step_is_called():
    seen = {}
    for path in ("experiments/tiny.yaml", "experiments/arena-ring.yaml", "experiments/pso-memorize-64.yaml",
                 "experiments/tune-ring-ga.yaml"):
        spec = load_spec(Path(__file__).resolve().parents[1] / path)
        seen[spec.algorithm] = (spec.length_field, spec.steps_wanted, spec.step_unit, spec.section.describe())
    assert seen == {
        "ga": ("ga.generations", 5, "generation", "5 generations of 7"),
        "arena": ("arena.rounds", 8, "step", "8 rounds of 2 players x (2 generators + 2 discriminators)"),
        "pso": ("pso.steps", 500, "step", "500 steps of 32 particles (64 directions)"),
        "tune": ("tune.steps", 4, "step", "4 steps of 6 trials (ga over 3 values of an arena)"),
    }
