"""Settings, read from the environment in one place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evoarena.settings import FleetSettings, Settings, check_fleet_config


def test_settings_default_when_the_environment_is_silent(monkeypatch):
    for variable in ("EVOARENA_STORE", "EVOARENA_ARTIFACTS", "EVOARENA_NOISE_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", "/home/tester")
    settings = Settings.from_env()
    assert settings.store == "sqlite:///runs/evoarena.db"
    assert settings.artifacts == "runs/artifacts"
    assert settings.noise_dir == Path("/home/tester/.cache/evoarena/noise")


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("HOME", "/home/tester")
    monkeypatch.setenv("EVOARENA_STORE", "mongodb://db:27017/evoarena")
    monkeypatch.setenv("EVOARENA_ARTIFACTS", "s3://bucket/runs")
    monkeypatch.setenv("EVOARENA_NOISE_DIR", "~/noise")
    settings = Settings.from_env()
    assert settings == Settings(
        store="mongodb://db:27017/evoarena",
        artifacts="s3://bucket/runs",
        noise_dir=Path("/home/tester/noise"),
    )


def test_unset_or_empty_variables_keep_the_defaults():
    assert FleetSettings.from_env({"EVOARENA_DELIVERY_LIMIT": ""}) == FleetSettings()


def test_variables_are_read_with_their_types():
    settings = FleetSettings.from_env({"EVOARENA_DELIVERY_LIMIT": "7", "EVOARENA_HEARTBEAT_WINDOW_S": "2.5",
                                       "EVOARENA_QUEUE": "arena-7"})
    assert (settings.delivery_limit, settings.heartbeat_window_s, settings.queue) == (7, 2.5, "arena-7")


def test_a_value_of_the_wrong_type_names_its_variable():
    with pytest.raises(ValueError, match="EVOARENA_DELIVERY_LIMIT='three' is not an integer"):
        FleetSettings.from_env({"EVOARENA_DELIVERY_LIMIT": "three"})


def test_a_delivery_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="EVOARENA_DELIVERY_LIMIT=0"):
        FleetSettings.from_env({"EVOARENA_DELIVERY_LIMIT": "0"})


@pytest.mark.parametrize(("raw", "value"), [("false", False), ("0", False), ("off", False), ("true", True), ("Yes", True)])
def test_switches_read_the_usual_spellings(raw, value):
    assert FleetSettings.from_env({"EVOARENA_AFFINITY": raw}).affinity is value


def test_a_switch_that_is_not_a_switch_names_its_variable():
    with pytest.raises(ValueError, match="EVOARENA_AFFINITY='maybe' is not one of 1, true"):
        FleetSettings.from_env({"EVOARENA_AFFINITY": "maybe"})


def test_the_time_limit_sets_every_ops_limits():
    from evoarena.fleet.app import time_limits

    limits = time_limits(FleetSettings.from_env({"EVOARENA_TIME_LIMIT_S": "3600"}).time_limit_s)
    assert limits["train_pair"] == limits["match"] == limits["cross_train"] == (3000.0, 3600.0)
    assert limits["evaluate"] == (1500.0, 1800.0)


# --- the fleet's configuration where pods share nothing (settings.check_fleet_config) ------------

SHARED = {"EVOARENA_BROKER_URL": "amqp://evoarena:pw@rabbitmq:5672//", "EVOARENA_STORE": "mongodb://mongodb:27017/evoarena",
          "EVOARENA_ARTIFACTS": "s3://bucket/runs"}
IN_A_POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}


@pytest.mark.parametrize("role", ["master", "worker"])
def test_on_one_machine_the_defaults_are_allowed(role):
    assert check_fleet_config(role, {}) is None


@pytest.mark.parametrize("role", ["master", "worker"])
def test_on_kubernetes_shared_settings_pass(role):
    assert check_fleet_config(role, {**IN_A_POD, **SHARED}) is None


@pytest.mark.parametrize(("role", "missing"), [
    ("master", "EVOARENA_BROKER_URL"), ("master", "EVOARENA_STORE"),
    ("worker", "EVOARENA_BROKER_URL"), ("worker", "EVOARENA_STORE"), ("worker", "EVOARENA_ARTIFACTS"),
])
def test_on_kubernetes_a_missing_setting_is_named(role, missing):
    env = {**IN_A_POD, **{k: v for k, v in SHARED.items() if k != missing}}

    problem = check_fleet_config(role, env)

    assert problem.startswith(f"{missing} is not set: on Kubernetes (KUBERNETES_SERVICE_HOST is set) a {role} needs ")


def test_an_empty_setting_counts_as_missing():
    problem = check_fleet_config("worker", {**IN_A_POD, **SHARED, "EVOARENA_BROKER_URL": ""})
    assert problem.startswith("EVOARENA_BROKER_URL is not set")


def test_a_master_needs_no_artifact_store():
    env = {**IN_A_POD, **{k: v for k, v in SHARED.items() if k != "EVOARENA_ARTIFACTS"}}
    assert check_fleet_config("master", env) is None


@pytest.mark.parametrize("store", ["sqlite:///runs/evoarena.db", "sqlite:///:memory:"])
def test_on_kubernetes_a_sqlite_store_is_refused(store):
    problem = check_fleet_config("worker", {**IN_A_POD, **SHARED, "EVOARENA_STORE": store})
    assert problem.startswith(f"EVOARENA_STORE={store!r} is a SQLite file in this pod: on Kubernetes")


@pytest.mark.parametrize("artifacts", ["runs/artifacts", "/tmp/artifacts", "file:///mnt/artifacts"])
def test_on_kubernetes_a_local_artifact_directory_is_refused(artifacts):
    problem = check_fleet_config("worker", {**IN_A_POD, **SHARED, "EVOARENA_ARTIFACTS": artifacts})
    assert problem.startswith(f"EVOARENA_ARTIFACTS={artifacts!r} is a directory in this pod: on Kubernetes")


def test_the_rule_can_be_asked_for_off_kubernetes():
    problem = check_fleet_config("master", {"EVOARENA_REQUIRE_CONFIG": "true"})
    assert problem.startswith("EVOARENA_BROKER_URL is not set: with EVOARENA_REQUIRE_CONFIG=true a master needs ")


def test_the_rule_can_be_turned_off_for_a_one_pod_trial():
    env = {**IN_A_POD, "EVOARENA_REQUIRE_CONFIG": "false", "EVOARENA_ARTIFACTS": "/tmp/artifacts"}
    assert check_fleet_config("worker", env) is None


def test_a_require_config_that_is_not_a_switch_names_its_variable():
    with pytest.raises(ValueError, match="EVOARENA_REQUIRE_CONFIG='sometimes' is not one of auto, 1, true"):
        check_fleet_config("worker", {"EVOARENA_REQUIRE_CONFIG": "sometimes"})


# The real entry points, as a pod runs them: a forgotten Secret must end the process at once
# with the line above, not leave it retrying a broker that is not there.

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 120  # far above the ~1 s these take; reaching it means the process hung


def evoarena(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVOARENA_") and k != "KUBERNETES_SERVICE_HOST"}
    return subprocess.run([sys.executable, "-m", "evoarena", *args], capture_output=True, text=True,
                          env={**base, **env}, timeout=HANG_GUARD_S, cwd=ROOT)


@pytest.mark.parametrize("missing", ["EVOARENA_BROKER_URL", "EVOARENA_STORE", "EVOARENA_ARTIFACTS"])
def test_a_worker_pod_without_a_setting_exits_2_with_one_line_naming_it(missing):
    env = {**IN_A_POD, **{k: v for k, v in SHARED.items() if k != missing}}

    done = evoarena("worker", env=env)

    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {missing} is not set: on Kubernetes")


@pytest.mark.parametrize("missing", ["EVOARENA_BROKER_URL", "EVOARENA_STORE"])
def test_a_fleet_master_pod_without_a_setting_exits_2_with_one_line_naming_it(missing):
    env = {**IN_A_POD, **{k: v for k, v in SHARED.items() if k != missing}}

    done = evoarena("run", "experiments/tiny.yaml", "--fleet", env=env)

    assert (done.returncode, done.stdout) == (2, "")
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {missing} is not set: on Kubernetes")


def test_a_fleet_master_pod_with_a_sqlite_store_exits_2():
    done = evoarena("run", "experiments/tiny.yaml", "--fleet",
                    env={**IN_A_POD, **SHARED, "EVOARENA_STORE": "sqlite:///runs/evoarena.db"})

    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: EVOARENA_STORE='sqlite:///runs/evoarena.db' is a SQLite file in "
                                        "this pod: on Kubernetes (KUBERNETES_SERVICE_HOST is set) a master needs the "
                                        "result store every pod reads (mongodb://...)"]


def test_a_fleet_master_pod_with_every_setting_goes_on_to_reach_its_broker():
    # The pod's broker host does not resolve here: the master passing the check is seen failing to
    # reach the broker, which it asks before it opens the store (fleet/broker.py).
    env = {**IN_A_POD, **SHARED, "EVOARENA_STORE": "mongodb://127.0.0.1:1/evoarena?serverSelectionTimeoutMS=100"}

    done = evoarena("run", "experiments/tiny.yaml", "--fleet", env=env)

    assert done.returncode == 1
    assert "is not set" not in done.stderr
    assert "error: the broker at amqp://evoarena:***@rabbitmq:5672// does not answer" in done.stderr


def test_a_worker_pod_with_every_setting_joins_the_fleet(tmp_path):
    from evoarena.fleet.app import broker_url
    from evoarena.fleet.local_workers import LocalWorkers
    from helpers import broker_up

    if not broker_up():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (.ci/run starts it)", pytrace=False)
    # LocalWorkers turns the check off for workers that share one machine; a pod's worker does not.
    env = {**IN_A_POD, **SHARED, "EVOARENA_REQUIRE_CONFIG": "auto", "EVOARENA_NOISE_DIR": str(tmp_path / "noise")}
    with LocalWorkers(tmp_path, {**env, "EVOARENA_BROKER_URL": broker_url()}, label="settings") as workers:
        node = workers.start("pod")
        workers.wait_ready()  # it answers a ping on the real broker: it got past the check
        assert workers.procs[node].poll() is None
