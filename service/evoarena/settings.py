"""Everything evoarena reads from the environment, read here and nowhere else. The experiment
itself is in its spec (spec/experiment.py); these are the machine's and the fleet's settings. Each field
`name` of the classes below is the variable EVOARENA_<NAME>; an unset or empty variable keeps the
default, a value of the wrong type is a ValueError naming the variable. The chart sets them from
its values (helm/evoarena/templates/configmap.yaml and the release's Secrets).

The master and the workers of one fleet must see the same FleetSettings: RabbitMQ refuses to
redeclare a queue with other arguments.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

HEARTBEAT_S = 5.0  # the master's default heartbeat interval (EVOARENA_MASTER_HEARTBEAT_S; heartbeat.py)


class FromEnv:
    """A frozen dataclass whose fields are read from EVOARENA_<FIELD> variables."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """The settings from `env` (os.environ by default)."""
        env = os.environ if env is None else env
        values = {}
        for field in fields(cls):
            name = f"EVOARENA_{field.name.upper()}"
            raw = env.get(name)
            if not raw:
                continue
            kind = type(field.default)
            if kind is bool:
                if raw.lower() not in _BOOLEANS:
                    raise ValueError(f"{name}={raw!r} is not one of {', '.join(_BOOLEANS)}")
                values[field.name] = _BOOLEANS[raw.lower()]
                continue
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
        return cls(**values)


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class Settings(FromEnv):
    """Where this machine keeps a run's things."""

    store: str = "sqlite:///runs/evoarena.db"
    """Where runs and their results are recorded, as a URL."""
    artifacts: str = "runs/artifacts"
    """Where checkpoints and other files go: a directory or a URL."""
    noise_dir: Path = Path("~/.cache/evoarena/noise")
    """Where generated noise tables are cached."""
    s3_endpoint_url: str = ""
    """An S3-compatible store's endpoint (MinIO); empty: AWS S3."""
    image: str = ""
    """The image `evoarena submit` gives the master: the chart sets its CPU image."""
    task_key: str = ""
    """The fleet's key: the master signs every task with it, workers run only signed tasks
    (tasks.py: signing). A secret: the chart generates it into the release's env Secret."""
    allow_unsigned: bool = False
    """Let a worker without a task key take tasks from a broker on another machine, where anyone
    who can publish to it could send it work (check_task_key); on loopback a key is never required."""
    metrics_port: int = 0
    """Where a worker or the master serves Prometheus metrics (metrics.py); 0: nowhere."""
    progress_every: int = 1
    """Off a terminal, `evoarena run` prints the line of every this many steps (logs.ProgressLine)."""
    master_heartbeat_s: float = HEARTBEAT_S
    """`evoarena run` writes a heartbeat into the experiment's document this often; `list` and
    `status` call a running experiment stale after 6 missed beats (heartbeat.py)."""
    require_config: str = "auto"
    """Whether a worker or a fleet master refuses to start without a shared broker, store and
    artifact store (check_fleet_config): "true", "false", or "auto": on Kubernetes only."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_dir", Path(self.noise_dir).expanduser())
        if self.require_config.lower() not in ("auto", *_BOOLEANS):
            raise ValueError(f"EVOARENA_REQUIRE_CONFIG={self.require_config!r} is not one of auto, "
                             f"{', '.join(_BOOLEANS)}")


@dataclass(frozen=True)
class SpecLimits(FromEnv):
    """How large an experiment file, and the run it asks for, may be (spec/experiment.py, spec/limits.py).
    A spec is a few KB and a few hundred values: these limits refuse, in one line and before
    anything is allocated, a file or a run that would not fit a machine."""

    spec_max_bytes: int = 1 << 20
    """An experiment file larger than this is refused before it is parsed (1 MiB: also the most a
    Kubernetes ConfigMap holds, where `submit` puts the file). Its aliases expanded, a file may
    hold no more characters of text than this either."""
    spec_max_values: int = 10_000
    """Values (scalars, lists and mappings) in an experiment file, each YAML alias counted as a
    copy of what it names: a 390-byte alias bomb names billions."""
    run_max_memory_mb: int = 8192
    """A run whose estimated memory on one machine passes this many MiB is refused (spec/limits.py:
    a local run's master and workers together; a fleet's master, and each of its workers); 0: no
    limit. `evoarena run --force` skips the check for one run."""

    def __post_init__(self) -> None:
        for name in ("spec_max_bytes", "spec_max_values"):
            if getattr(self, name) < 1:
                raise ValueError(f"EVOARENA_{name.upper()}={getattr(self, name)}: must be at least 1")


@dataclass(frozen=True)
class WorkerSettings(FromEnv):
    """How a worker process computes and caches."""

    cache_mb: int = 512
    """Parent-cache budget of each worker process, MiB."""
    threads: int = 0
    """torch intra-op threads; 0 leaves torch's default."""
    device: str = ""
    """A fixed torch device ("cpu", "cuda:1"); empty or "cuda": the process's own GPU (device_for)."""
    tf32: bool = False
    """Let the GPU compute float32 convolutions and matrix products in TF32: faster, but fitnesses
    then differ from a CPU worker's by more than float32's rounding (arithmetic.py); off: IEEE float32."""
    arithmetic: str = ""
    """The CPU arithmetic, fast or reproducible (arithmetic.py). `evoarena run`: overrides the
    spec's `arithmetic` (empty: the spec's). `evoarena worker`: the one its processes compute in
    (empty: fast); they refuse the tasks of an experiment recorded with the other."""

    problem_modules: str = ""
    """Comma-separated module prefixes from which this worker imports problems of the user's own
    (`problem: {kind: "pkg.mod:Name"}`, spec/user_problem.py); empty: none, and a task naming one is
    refused. `evoarena run` on one machine adds its spec's module for the workers it starts."""

    @property
    def trusted_problems(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.problem_modules.split(",") if p.strip())

    def __post_init__(self) -> None:
        if self.arithmetic not in ("", "fast", "reproducible"):
            raise ValueError(f"EVOARENA_ARITHMETIC={self.arithmetic!r} is not one of fast, reproducible")


@dataclass(frozen=True)
class FleetSettings(FromEnv):
    """The broker and how the fleet uses it (fleet/app.py, fleet/celery_executor.py)."""

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    broker_wait: bool = False
    """`evoarena run --fleet` and `evoarena worker` wait for a broker that does not answer yet, trying
    it every few seconds (on Kubernetes, where the broker may start after them; the same as
    `--wait-for-broker`); off, they stop at once with one line that names it."""
    queue: str = "evoarena"
    """The shared task queue; its dead letters go to `<queue>.dead`."""
    delivery_limit: int = 3
    """How many times one task is delivered at most: after that many deliveries whose worker
    process died, the broker dead-letters it (1: never delivered again). The queues' x-delivery-limit
    is one less, since RabbitMQ counts redeliveries (fleet/app.py)."""
    direct_queue_expires_s: float = 3600.0
    """A worker's own queue is deleted by the broker this long after its last use."""
    heartbeat_window_s: float = 30.0
    """A worker silent this long (no task started or finished, no answer to a ping) is gone."""
    time_limit_s: float = 1800.0
    """The hard time limit of the longest tasks (an arena op's chunk); an evaluation gets half
    (fleet/app.py: time_limits). The chart's fleet.taskHardTimeLimitSeconds."""
    affinity: bool = True
    """Send a child to the worker that holds its parent (fleet/routing.py); off: shared queue only."""
    backlog: int = 0
    """Tasks that may wait on one worker while it holds what they need; 0: each op's own (routing.BACKLOG)."""
    management_url: str = ""
    """The RabbitMQ management API (http://user:pass@host:15672): `status --watch` shows the queues."""
    task_events: bool = True
    """Workers send Celery task events (received, started, succeeded...): Flower shows them."""
    log_level: str = "WARNING"
    """For Celery's and evoarena's loggers."""
    message_max_bytes: int = 16 << 20
    """A worker refuses (dead-letters, unread) a task message whose body is larger (16 MiB, also
    RabbitMQ 4's default max_message_size). A task is a few KB (bench/message.py measures one); a
    group of siblings (ga.eval_group) carries each child's genome."""

    def __post_init__(self) -> None:
        if self.delivery_limit < 1:
            raise ValueError(f"EVOARENA_DELIVERY_LIMIT={self.delivery_limit}: at least one delivery is needed")
        if self.time_limit_s < 60:
            raise ValueError(f"EVOARENA_TIME_LIMIT_S={self.time_limit_s:g}: give a task at least a minute")


# --- the fleet's configuration, required where pods share nothing ---------------------------

# What each role of the fleet cannot start without, as (variable, what it is for). A master
# sends tasks and reads results; a worker also reads and writes checkpoints.
FLEET_NEEDS = {
    "master": (("EVOARENA_BROKER_URL", "the fleet's broker (amqp://...)"),
               ("EVOARENA_STORE", "the result store every pod reads (mongodb://...)")),
    "worker": (("EVOARENA_BROKER_URL", "the fleet's broker (amqp://...)"),
               ("EVOARENA_STORE", "the result store every pod reads (mongodb://...)"),
               ("EVOARENA_ARTIFACTS", "the checkpoint store every pod reads (s3://bucket/prefix)")),
}


def check_fleet_config(role: str, env: Mapping[str, str] | None = None) -> str | None:
    """The one line that says why a fleet `role` ("master" or "worker") must not start, or None.

    On one machine every default works: a local broker, a SQLite file, a directory. On
    Kubernetes (KUBERNETES_SERVICE_HOST is set in every pod) or with EVOARENA_REQUIRE_CONFIG=true,
    those defaults would give a master that waits forever on a broker that is not there, or
    pods that each keep their own results and checkpoints: so each setting the role needs must
    be given, the store must not be a SQLite file and checkpoints must not go to a directory of
    the pod's own. EVOARENA_REQUIRE_CONFIG=false turns the check off (a one-pod trial)."""
    env = os.environ if env is None else env
    wanted = Settings.from_env(env).require_config.lower()
    where = "with EVOARENA_REQUIRE_CONFIG=true"
    if wanted == "auto":
        if not env.get("KUBERNETES_SERVICE_HOST"):
            return None
        where = "on Kubernetes (KUBERNETES_SERVICE_HOST is set)"
    elif not _BOOLEANS[wanted]:
        return None
    for name, what in FLEET_NEEDS[role]:
        value = env.get(name, "")
        if not value:
            return (f"{name} is not set: {where} a {role} needs {what}; "
                    f"EVOARENA_REQUIRE_CONFIG=false skips this check on a one-pod trial")
        if name == "EVOARENA_STORE" and value.startswith("sqlite:"):
            return (f"{name}={value!r} is a SQLite file in this pod: {where} a {role} needs {what}")
        if name == "EVOARENA_ARTIFACTS" and not value.startswith("s3://"):
            return (f"{name}={value!r} is a directory in this pod: {where} a {role} needs {what}")
    return None


def check_task_key(env: Mapping[str, str] | None = None) -> str | None:
    """The one line that says why a worker must not start without a task key, or None.

    Without EVOARENA_TASK_KEY a worker runs whatever task reaches its queues. A broker on
    loopback (127.0.0.0/8, ::1, localhost) carries only what processes of this machine publish;
    a broker on a network carries whatever anyone who can reach it publishes, so a worker there
    needs the fleet's key, or EVOARENA_ALLOW_UNSIGNED=true to say that this is intended."""
    env = os.environ if env is None else env
    settings = Settings.from_env(env)
    if settings.task_key or settings.allow_unsigned:
        return None
    remote = [host for host in _broker_hosts(FleetSettings.from_env(env).broker_url) if not _is_loopback(host)]
    if not remote:
        return None
    return (f"EVOARENA_TASK_KEY is not set and the broker ({', '.join(remote)}) is not on this machine: "
            f"this worker would run tasks anyone who can publish there sends; give it the fleet's key "
            f"(the master's), or set EVOARENA_ALLOW_UNSIGNED=true to run unsigned tasks")


def _broker_hosts(url: str) -> list[str]:
    """The hosts of a broker URL, or of each URL of a failover list ("amqp://a//;amqp://b//");
    Celery's default, localhost, where a URL names none."""
    return [urlsplit(part.strip()).hostname or "localhost" for part in url.split(";") if part.strip()]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: only DNS knows where it points
        return False


def device_for(slot: int, gpus: int, wanted: str | None = None) -> str:
    """The torch device of worker process `slot` (0, 1, ... within its machine or pod) where
    `gpus` GPUs are visible: its own GPU, cuda:<slot mod gpus>, so that N processes on an N-GPU
    node use all N. `wanted` (EVOARENA_DEVICE) overrides it with a fixed device ("cpu",
    "cuda:1"); "cuda" asks for a GPU and gets the pinned one."""
    if wanted and wanted != "cuda":
        return wanted
    if gpus == 0:
        if wanted == "cuda":
            raise RuntimeError("EVOARENA_DEVICE=cuda but torch sees no GPU")
        return "cpu"
    return f"cuda:{slot % gpus}"
