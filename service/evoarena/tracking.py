"""Experiment tracking in MLflow, by the master alone (workers log nothing: the master has it all).

On when the spec says `tracking: {mlflow: {uri: ...}}`, or when MLFLOW_TRACKING_URI is set. The
master then logs, into one MLflow run per evoarena experiment (tagged with the experiment's name
and evoarena's version):

- at the start, the spec as parameters (its fields flattened to dotted paths, lists as JSON);
- each step's summary (the numbers of the stored state's `stats`: best, mean, quantiles, cache
  hits, tasks/s; an arena's quality measures and encounter matrix summary as "a.b") as metrics,
  at the step's index;
- at the end, the report page and the best network (safetensors) as artifacts, and the run
  marked finished (or failed, with the run).

The MLflow run's id is kept in the experiment's document in the store, so a resumed run goes on
logging into the same MLflow run, never a second one. A tracking server that does not answer is
warned about once, and the run goes on without it: tracking never fails a run. So that a server
that is down costs seconds, not MLflow's default of minutes of retries per request, the master
asks an HTTP server's /health first (HEALTH_TIMEOUT_S), and gives MLflow's client RETRIES retries
and a REQUEST_TIMEOUT_S timeout where the environment does not set its own
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from evoarena import __version__
from evoarena.spec.experiment import ExperimentSpec, spec_to_dict
from evoarena.store import ResultStore

log = logging.getLogger(__name__)

PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits
PARAM_VALUE_LIMIT = 6000
HEALTH_TIMEOUT_S, RETRIES, REQUEST_TIMEOUT_S = 5.0, 2, 10
STEP_METRIC = "step"  # logged with every step: which steps the MLflow run holds, for a resumed run


def mlflow_uri(spec: ExperimentSpec, environ=os.environ) -> str | None:
    """The MLflow tracking URI the run logs to, or None when it is not tracked."""
    wanted = spec.tracking.mlflow
    if wanted is not None and wanted.uri:
        return wanted.uri
    return environ.get("MLFLOW_TRACKING_URI") or None


def flat(data: dict, prefix: str = "") -> dict:
    """`data` with nested dicts flattened to "outer.inner" keys."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def step_metrics(state: dict) -> dict[str, float]:
    """The finite numbers of a stored step's summary (`stats`), by flattened name."""
    return {key: float(value) for key, value in flat(state.get("stats") or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class MlflowTracker:
    """One evoarena experiment's MLflow run. Every call is safe: the first failure is warned about
    and the tracker falls silent."""

    def __init__(self, uri: str, spec: ExperimentSpec, store: ResultStore):
        self.uri, self.spec, self.store = uri, spec, store
        self.run_id: str | None = None
        self.quiet = False
        self._guard(self._start, needs_run=False)

    def _start(self) -> None:
        if self.uri.startswith(("http://", "https://")):  # one quick question before MLflow's retries
            urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S).close()
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(RETRIES))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(REQUEST_TIMEOUT_S))
        from mlflow.entities import Param  # mlflow is optional: only a tracked run imports it
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        doc = self.store.get_experiment(self.spec.name)
        kept = (doc.get("tracking") or {}).get("mlflow_run_id")
        if kept is not None:  # a resumed run: the same MLflow run, its parameters logged already
            self.run_id = kept
            self.client.update_run(kept, status="RUNNING")
            # the steps stored but not logged (the master died in between, or MLflow did not answer)
            logged = {m.step for m in self.client.get_metric_history(kept, STEP_METRIC)}
            for doc in self.store.list_generations(self.spec.name):
                if doc["generation"] not in logged:
                    self._log_step(doc["generation"], doc)
            return
        name = self.spec.tracking.mlflow.experiment if self.spec.tracking.mlflow else "evoarena"
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.spec.name,
                                     tags={"evoarena.experiment": self.spec.name, "evoarena.version": __version__})
        self.run_id = run.info.run_id
        params = [Param(key, _param(value)) for key, value in flat(spec_to_dict(self.spec)).items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_BATCH])
        doc = self.store.get_experiment(self.spec.name)
        self.store.put_experiment(self.spec.name, {**doc, "tracking": {"mlflow_run_id": self.run_id,
                                                                      "mlflow_uri": self.uri}})

    def step(self, index: int, state: dict) -> None:
        """Log step `index`'s summary as metrics at step `index`."""
        self._guard(lambda: self._log_step(index, state))

    def _log_step(self, index: int, state: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {**step_metrics(state), STEP_METRIC: float(index)}
        metrics = [Metric(key, value, now, index) for key, value in values.items()]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_BATCH])

    def finish(self, artifacts: Callable[[Path], list[Path]] | None, failed: bool = False) -> None:
        """Log the files `artifacts(folder)` writes into a temporary folder, and mark the run finished
        (or failed)."""
        def log_end() -> None:
            if artifacts is not None:
                with tempfile.TemporaryDirectory(prefix="evoarena-mlflow-") as folder:
                    for path in artifacts(Path(folder)):
                        self.client.log_artifact(self.run_id, str(path))
            with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints the run's links: not the run's output
                self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

        self._guard(log_end)

    def _guard(self, action: Callable[[], None], needs_run: bool = True) -> None:
        """Run `action` unless the tracker fell silent (or, `needs_run`, has no MLflow run); its
        first failure is warned about and silences the tracker."""
        if self.quiet or (needs_run and self.run_id is None):
            return
        try:
            action()
        except ImportError:
            self.quiet = True
            log.warning("experiment %r: tracking in MLflow needs its client (pip install 'evoarena[tracking]'); "
                        "the run goes on without tracking", self.spec.name)
        except Exception as exc:  # noqa: BLE001: a tracker's failure, whatever it is, never fails the run
            self.quiet = True
            log.warning("experiment %r: MLflow at %s does not answer (%s: %s); the run goes on without tracking",
                        self.spec.name, self.uri, type(exc).__name__, exc)


def _param(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:PARAM_VALUE_LIMIT]
