"""Settings, read from the environment in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from evoarena.settings import FleetSettings, Settings


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
