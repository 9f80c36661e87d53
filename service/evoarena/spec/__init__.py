"""The experiment file: what a run is, validated before anything runs.

`experiment.py` holds the whole file's model (`ExperimentSpec`) and its reading (`load_spec`,
`parse_spec`); each algorithm's section has a module of its own (`arena.py`, `pso.py`, `tune.py`),
with the parts they share in `base.py` and the size limits of a file in `limits.py`.
"""

from evoarena.spec.experiment import ExperimentSpec, SpecError, load_spec, parse_spec, spec_to_dict, validate_name

__all__ = ["ExperimentSpec", "SpecError", "load_spec", "parse_spec", "spec_to_dict", "validate_name"]
