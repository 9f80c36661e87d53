"""The fleet's settings, read from the environment in one place."""

from __future__ import annotations

import pytest

from evoarena.fleet.settings import FleetSettings


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
