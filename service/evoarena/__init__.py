"""evoarena: neuroevolution with compact genomes, locally or on a fleet.

From Python (api.py): `evoarena.run(spec)` runs an experiment as `evoarena run` does and returns a
Run; `evoarena.open(name)` opens a stored one.
"""

__version__ = "0.1.0"

API = ("run", "open", "Run", "RunError", "MixtureGenerator")


def __getattr__(name: str):
    """evoarena.run, evoarena.open, ...: api.py's, imported when first asked for, so that `import
    evoarena` (the liveness probe, Flower, `evoarena --help`) loads neither torch nor the stores."""
    if name in API:
        from evoarena import api

        return getattr(api, name)
    raise AttributeError(f"module 'evoarena' has no attribute {name!r}")
