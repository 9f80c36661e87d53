"""The ResultStore contract: every backend must pass every test that takes the `store` fixture.

The backends: SQLite (a file and in memory), MongoStore on mongomock, and MongoStore on a real
server when EVOARENA_TEST_MONGO_URL names one (each test gets a fresh database, dropped after).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import mongomock
import pymongo
import pytest
from mongomock.collection import Collection
from pymongo.errors import AutoReconnect, DuplicateKeyError, NetworkTimeout, NotPrimaryError

from evoarena.store import (
    MongoStore,
    ResultStore,
    SQLiteStore,
    StoreUnavailable,
    mongo,
    open_store,
    redact,
)
from helpers import mongomock_accepting_sort, mongomock_db, mongomock_store

MONGO_URL = os.environ.get("EVOARENA_TEST_MONGO_URL")


@contextmanager
def sqlite_file(tmp_path: Path) -> Iterator[ResultStore]:
    with SQLiteStore(tmp_path / "nested" / "results.db") as store:
        yield store


@contextmanager
def sqlite_memory(tmp_path: Path) -> Iterator[ResultStore]:
    with open_store("sqlite://:memory:") as store:
        yield store


@contextmanager
def real_mongodb_db(tmp_path: Path) -> Iterator[tuple[MongoStore, pymongo.database.Database]]:
    """A MongoStore on a fresh database of the server at EVOARENA_TEST_MONGO_URL, dropped after."""
    database = f"evoarena_test_{uuid.uuid4().hex[:12]}"
    with pymongo.MongoClient(MONGO_URL) as client:
        try:
            with MongoStore(MONGO_URL, database=database) as store:
                yield store, client[database]
        finally:
            client.drop_database(database)


@contextmanager
def real_mongodb(tmp_path: Path) -> Iterator[ResultStore]:
    with real_mongodb_db(tmp_path) as (store, _):
        yield store


# Each backend: (test id, factory yielding a fresh empty store and cleaning up after it).
BACKENDS: list[tuple[str, Callable[[Path], AbstractContextManager[ResultStore]]]] = [
    ("sqlite-file", sqlite_file),
    ("sqlite-memory", sqlite_memory),
    ("mongomock", mongomock_store),
]
MONGO_BACKENDS = [("mongomock", mongomock_db)]
if MONGO_URL:
    BACKENDS.append(("mongodb", real_mongodb))
    MONGO_BACKENDS.append(("mongodb", real_mongodb_db))


@pytest.fixture(params=[factory for _, factory in BACKENDS], ids=[name for name, _ in BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    with request.param(tmp_path) as s:
        yield s


@pytest.fixture(
    params=[factory for _, factory in MONGO_BACKENDS], ids=[name for name, _ in MONGO_BACKENDS]
)
def mongo_db(request, tmp_path) -> Iterator[tuple[MongoStore, pymongo.database.Database]]:
    """A MongoStore, and the test's own handle on its database."""
    with request.param(tmp_path) as pair:
        yield pair


def result(_id: str, generation: int = 0, op: str = "evaluate", experiment: str = "exp", **more):
    return {"_id": _id, "experiment": experiment, "generation": generation, "op": op, **more}


# results


def test_result_round_trips(store):
    doc = result("r1", fitness=0.5, genome={"deltas": [[3, 0.02, "all"]]})
    store.put_result(doc)
    assert store.get_result("r1") == doc


def test_unknown_result_is_none(store):
    assert store.get_result("nope") is None


def test_upsert_replaces_whole_doc_not_duplicates(store):
    store.put_result(result("r1", fitness=0.1, stale="yes"))
    store.put_result(result("r1", fitness=0.9))
    assert store.get_result("r1") == result("r1", fitness=0.9)
    assert store.count_results("exp") == 1


def test_upsert_can_move_result_to_other_generation_and_op(store):
    store.put_result(result("r1", generation=0, op="evaluate"))
    store.put_result(result("r1", generation=3, op="match"))
    assert store.find_results("exp", generation=0) == []
    assert [d["_id"] for d in store.find_results("exp", generation=3, op="match")] == ["r1"]


def test_add_result_writes_a_result_that_is_not_stored(store):
    assert store.add_result(result("r1", error="lost")) is True
    assert store.get_result("r1") == result("r1", error="lost")


def test_add_result_never_overwrites_a_stored_result(store):
    store.put_result(result("r1", fitness=0.9, error=None))
    assert store.add_result(result("r1", fitness=None, error="lost")) is False
    assert store.get_result("r1") == result("r1", fitness=0.9, error=None)
    assert store.count_results("exp") == 1


def test_add_result_checks_the_doc_before_writing(store):
    with pytest.raises(ValueError, match="generation"):
        store.add_result({"_id": "r2", "experiment": "exp", "op": "evaluate"})
    assert store.get_result("r2") is None


def test_record_result_writes_a_result_that_is_not_stored(store):
    assert store.record_result(result("r1", fitness=0.5)) is None
    assert store.get_result("r1") == result("r1", fitness=0.5)


def test_record_result_replaces_a_transient_record(store):
    store.add_result(result("r1", fitness=None, error="broker lost it", transient=True))
    assert store.record_result(result("r1", fitness=0.5, error=None)) is None
    assert store.get_result("r1") == result("r1", fitness=0.5, error=None)
    assert store.count_results("exp") == 1


@pytest.mark.parametrize("stored", [
    result("r1", fitness=0.9, error=None),
    result("r1", fitness=None, error="genome diverged", transient=False),
], ids=["real-result", "genome-failure"])
def test_record_result_keeps_a_stored_result_and_returns_it(store, stored):
    store.put_result(stored)
    returned = store.record_result(result("r1", fitness=0.1, error=None))
    assert returned == stored
    assert store.get_result("r1") == stored
    returned["fitness"] = 123.0  # a fresh dict: changing it changes nothing stored
    assert store.get_result("r1") == stored


def test_record_result_checks_the_doc_before_writing(store):
    with pytest.raises(ValueError, match="generation"):
        store.record_result({"_id": "r2", "experiment": "exp", "op": "evaluate"})
    assert store.get_result("r2") is None


def test_redelivered_batch_does_not_duplicate(store):
    batch = [result(f"r{i}", fitness=i) for i in range(5)]
    store.put_results(batch)
    store.put_results(batch)
    assert store.count_results("exp") == 5


def test_put_results_is_all_or_nothing(store):
    bad = {"_id": "r2", "experiment": "exp", "op": "evaluate"}
    with pytest.raises(ValueError, match="generation"):
        store.put_results([result("r1"), bad])
    assert store.count_results("exp") == 0


@pytest.mark.parametrize("key", ["_id", "experiment", "generation", "op"])
def test_missing_key_rejected_with_key_named(store, key):
    doc = result("r1")
    del doc[key]
    with pytest.raises(ValueError, match=repr(key)):
        store.put_result(doc)
    assert store.count_results("exp") == 0


@pytest.mark.parametrize("generation", ["3", 3.0, True, None])
def test_mistyped_generation_rejected(store, generation):
    with pytest.raises(ValueError, match="'generation'"):
        store.put_result(result("r1", generation=generation))


def test_find_filters_by_experiment_generation_and_op(store):
    store.put_results(
        [
            result("a", 0, "evaluate"),
            result("b", 0, "match"),
            result("c", 1, "evaluate"),
            result("d", 1, "match"),
            result("e", 1, "match", experiment="other"),
        ]
    )
    ids = lambda docs: [d["_id"] for d in docs]  # noqa: E731
    assert ids(store.find_results("exp")) == ["a", "b", "c", "d"]
    assert ids(store.find_results("exp", generation=1)) == ["c", "d"]
    assert ids(store.find_results("exp", op="match")) == ["b", "d"]
    assert ids(store.find_results("exp", generation=1, op="match")) == ["d"]
    assert ids(store.find_results("exp", generation=0, op="cross_train")) == []
    assert ids(store.find_results("other")) == ["e"]


def test_find_sorts_by_generation_then_id(store):
    docs = [result(f"g{g}-{i}", generation=g) for g in (10, 2, 0) for i in (3, 1, 2)]
    random.Random(0).shuffle(docs)
    for doc in docs:
        store.put_result(doc)
    found = [(d["generation"], d["_id"]) for d in store.find_results("exp")]
    # generation 10 after 2: the order is numeric, not the text order of ids
    assert found == sorted(found) and found[-1] == (10, "g10-3")


def test_counts_match_filters(store):
    store.put_results([result(f"r{i}", generation=i % 3, op=("a", "b")[i % 2]) for i in range(12)])
    assert store.count_results("exp") == 12
    assert store.count_results("exp", generation=0) == 4
    assert store.count_results("exp", op="a") == 6
    assert store.count_results("exp", generation=0, op="a") == 2
    assert store.count_results("missing") == 0


def test_nan_and_inf_round_trip(store):
    store.put_result(result("r1", fitness=math.nan, loss=math.inf, low=-math.inf))
    doc = store.get_result("r1")
    assert math.isnan(doc["fitness"]) and doc["loss"] == math.inf and doc["low"] == -math.inf


def test_floats_round_trip_exactly(store):
    values = [0.1 + 0.2, 1e-310, 2.0**-1074, 1.7976931348623157e308, -0.0] + [
        random.Random(1).random() for _ in range(20)
    ]
    store.put_result(result("r1", values=values))
    back = store.get_result("r1")["values"]
    assert [v.hex() for v in back] == [v.hex() for v in values]


def test_returned_docs_are_copies(store):
    store.put_experiment("exp", {"spec": {"population": 8}})
    store.put_result(result("r1", scores=[1, 2]))
    store.put_generation("exp", 0, {"best": {"fitness": 1.0}})
    store.get_experiment("exp")["spec"]["population"] = 999
    store.get_result("r1")["scores"].append(3)
    store.find_results("exp")[0]["op"] = "changed"
    store.get_generation("exp", 0)["best"]["fitness"] = -1
    store.list_generations("exp")[0]["extra"] = True
    assert store.get_experiment("exp")["spec"] == {"population": 8}
    assert store.get_result("r1") == result("r1", scores=[1, 2])
    assert store.get_generation("exp", 0) == {
        "_id": "exp:000000", "experiment": "exp", "generation": 0, "best": {"fitness": 1.0}
    }


def test_stored_docs_do_not_alias_caller_docs(store):
    doc = result("r1", scores=[1])
    store.put_result(doc)
    doc["scores"].append(2)
    assert store.get_result("r1")["scores"] == [1]


# generations


def test_generation_doc_gets_id_experiment_and_generation(store):
    store.put_generation("exp", 7, {"best_fitness": 0.25})
    assert store.get_generation("exp", 7) == {
        "_id": "exp:000007", "experiment": "exp", "generation": 7, "best_fitness": 0.25
    }
    assert store.get_generation("exp", 8) is None


def test_generation_upsert_replaces(store):
    store.put_generation("exp", 0, {"status": "running", "partial": True})
    store.put_generation("exp", 0, {"status": "done"})
    assert [g["status"] for g in store.list_generations("exp")] == ["done"]
    assert "partial" not in store.get_generation("exp", 0)


def test_list_generations_sorted_by_generation(store):
    for g in (10, 2, 0, 1):
        store.put_generation("exp", g, {})
    store.put_generation("other", 5, {})
    assert [g["generation"] for g in store.list_generations("exp")] == [0, 1, 2, 10]


def test_last_generation_is_highest_with_generation_doc(store):
    assert store.last_generation("exp") is None
    store.put_result(result("r1", generation=99))  # results alone do not make a generation
    assert store.last_generation("exp") is None
    for g in (2, 10, 9):
        store.put_generation("exp", g, {})
    store.put_generation("other", 50, {})
    assert store.last_generation("exp") == 10


# experiments


def test_experiments_listed_sorted_and_upserted(store):
    assert store.list_experiments() == []
    assert store.get_experiment("b") is None
    store.put_experiment("b", {"kind": "ga", "old": 1})
    store.put_experiment("a", {"kind": "arena"})
    store.put_experiment("b", {"kind": "ga"})
    assert store.list_experiments() == ["a", "b"]
    assert store.get_experiment("b") == {"_id": "b", "kind": "ga"}


def test_touch_experiment_sets_only_the_given_fields(store):
    store.put_experiment("a", {"status": "running", "updated": 1.0, "spec": {"x": [1, 2]}})
    assert store.touch_experiment("a", heartbeat=5.5, heartbeat_s=2.0) is True
    assert store.get_experiment("a") == {"_id": "a", "status": "running", "updated": 1.0, "spec": {"x": [1, 2]},
                                         "heartbeat": 5.5, "heartbeat_s": 2.0}
    store.touch_experiment("a", heartbeat=6.5)
    assert store.get_experiment("a")["heartbeat"] == 6.5


def test_touch_experiment_of_an_unknown_experiment_writes_nothing(store):
    assert store.touch_experiment("nope", heartbeat=1.0) is False
    assert store.get_experiment("nope") is None
    assert store.list_experiments() == []


@pytest.mark.parametrize("field", ["_id", "status.x", "$set", "1st", ""])
def test_touch_experiment_refuses_a_field_that_is_not_plain_naming_it(store, field):
    store.put_experiment("a", {"status": "running"})
    with pytest.raises(ValueError, match=re.escape(f"field {field!r} cannot be set")):
        store.touch_experiment("a", **{field: 1})
    assert store.get_experiment("a") == {"_id": "a", "status": "running"}


def test_touch_experiment_keeps_a_status_written_meanwhile(store):
    store.put_experiment("a", {"status": "running"})
    store.put_experiment("a", {**store.get_experiment("a"), "status": "complete"})
    store.touch_experiment("a", heartbeat=2.0)
    assert store.get_experiment("a")["status"] == "complete"


# plans


def test_planned_is_false_before_add_plan_and_true_after(store):
    assert store.planned("exp", 3, "evaluate", "exp:000003:evaluate:g1@ab") is False
    store.add_plan("exp", 3, "evaluate", ["exp:000003:evaluate:g1@ab", "exp:000003:evaluate:g2@cd"])
    assert store.planned("exp", 3, "evaluate", "exp:000003:evaluate:g1@ab") is True
    assert store.planned("exp", 3, "evaluate", "exp:000003:evaluate:g2@cd") is True
    assert store.planned("exp", 3, "evaluate", "exp:000003:evaluate:g1@ff") is False


def test_add_plan_adds_to_the_ids_already_planned(store):
    store.add_plan("exp", 0, "evaluate", ["a", "b"])
    store.add_plan("exp", 0, "evaluate", ["b", "c"])
    store.add_plan("exp", 0, "evaluate", [])
    assert [store.planned("exp", 0, "evaluate", i) for i in ("a", "b", "c", "d")] == [True, True, True, False]


@pytest.mark.parametrize("other_step", [("other", 0, "evaluate"), ("exp", 1, "evaluate"), ("exp", 0, "match")],
                         ids=["experiment", "generation", "op"])
def test_the_plan_of_another_step_does_not_count(store, other_step):
    store.add_plan(*other_step, ["a"])
    assert store.planned("exp", 0, "evaluate", "a") is False
    assert store.planned(*other_step, "a") is True


@pytest.mark.parametrize("args, named", [
    (("exp", "0", "evaluate", ["a"]), "generation"),
    (("exp", 0, "evaluate", "a"), "ids"),
    (("exp", 0, "evaluate", [1]), "ids"),
    ((None, 0, "evaluate", ["a"]), "experiment"),
])
def test_add_plan_refuses_mistyped_arguments_naming_them(store, args, named):
    with pytest.raises(ValueError, match=f"plan {named}"):
        store.add_plan(*args)


# leases

HOLDER_A = {"id": "a-1f2e", "host": "node-a", "pid": 101}
HOLDER_B = {"id": "b-9c8d", "host": "node-b", "pid": 202}


def test_take_lease_takes_a_lease_that_no_one_holds(store):
    assert store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1000.0) is None
    assert store.take_lease("exp", HOLDER_B, stale_s=30.0, now=1001.0) == {
        **HOLDER_A, "_id": "exp", "beat": 1000.0, "taken": 1000.0}


def test_take_lease_refuses_a_live_lease_and_writes_nothing(store):
    store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1000.0)
    store.renew_lease("exp", HOLDER_A["id"], now=1020.0)
    held = store.take_lease("exp", HOLDER_B, stale_s=30.0, now=1045.0)
    assert (held["host"], held["pid"], held["beat"]) == ("node-a", 101, 1020.0)
    assert store.renew_lease("exp", HOLDER_B["id"], now=1046.0) is False  # B holds nothing
    assert store.renew_lease("exp", HOLDER_A["id"], now=1047.0) is True


def test_take_lease_takes_over_a_stale_lease(store):
    store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1000.0)
    assert store.take_lease("exp", HOLDER_B, stale_s=30.0, now=1031.0) is None
    assert store.renew_lease("exp", HOLDER_A["id"], now=1032.0) is False  # A learns it lost it
    assert store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1032.0)["id"] == HOLDER_B["id"]


def test_take_lease_by_its_own_holder_takes_it_again(store):
    store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1000.0)
    assert store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1005.0) is None
    assert store.take_lease("exp", HOLDER_B, stale_s=30.0, now=1006.0)["beat"] == 1005.0


def test_leases_of_two_experiments_are_apart(store):
    store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1000.0)
    assert store.take_lease("other", HOLDER_B, stale_s=30.0, now=1000.0) is None
    store.release_lease("other", HOLDER_B["id"])
    assert store.take_lease("exp", HOLDER_B, stale_s=30.0, now=1001.0)["id"] == HOLDER_A["id"]


def test_release_lease_frees_it_only_for_its_holder(store):
    store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1000.0)
    store.release_lease("exp", HOLDER_B["id"])
    assert store.take_lease("exp", HOLDER_B, stale_s=30.0, now=1001.0)["id"] == HOLDER_A["id"]
    store.release_lease("exp", HOLDER_A["id"])
    assert store.renew_lease("exp", HOLDER_A["id"], now=1002.0) is False
    assert store.take_lease("exp", HOLDER_B, stale_s=30.0, now=1002.0) is None


def test_lease_is_kept_apart_from_the_experiment_doc(store):
    store.put_experiment("exp", {"status": "running"})
    store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1000.0)
    store.put_experiment("exp", {"status": "running", "updated": 2.0})  # register() replaces it whole
    assert store.get_experiment("exp") == {"_id": "exp", "status": "running", "updated": 2.0}
    assert store.take_lease("exp", HOLDER_B, stale_s=30.0, now=1001.0)["id"] == HOLDER_A["id"]


@pytest.mark.parametrize("holder", [{"host": "h", "pid": 1}, {"id": ""}, {"id": 7}, "a-1f2e"])
def test_take_lease_refuses_a_holder_without_an_id(store, holder):
    with pytest.raises(ValueError, match="lease holder"):
        store.take_lease("exp", holder, stale_s=30.0, now=1000.0)


# baselines


def test_baseline_round_trips_with_id_experiment_and_kind(store):
    history = [{"epoch": 1, "train_loss": 2.25, "train_accuracy": 0.125}, {"epoch": 2, "train_loss": math.nan}]
    store.put_baseline("exp", "adam", {"lr": 1e-3, "history": history})
    got = store.get_baseline("exp", "adam")
    assert {k: v for k, v in got.items() if k != "history"} == {
        "_id": "exp:baseline:adam", "experiment": "exp", "kind": "adam", "lr": 1e-3}
    assert got["history"][0] == history[0] and math.isnan(got["history"][1]["train_loss"])


def test_baseline_upsert_replaces_and_is_kept_apart_per_experiment_and_kind(store):
    store.put_baseline("exp", "adam", {"epochs": 1, "stale": True})
    store.put_baseline("exp", "adam", {"epochs": 2})
    store.put_baseline("other", "adam", {"epochs": 3})
    assert store.get_baseline("exp", "adam") == {"_id": "exp:baseline:adam", "experiment": "exp", "kind": "adam",
                                                 "epochs": 2}
    assert store.get_baseline("other", "adam")["epochs"] == 3
    assert store.get_baseline("exp", "single_gan") is None
    assert store.count_results("exp") == 0 and store.list_experiments() == []


# SQLite only


def _write_results(path: str, worker: int, n: int) -> None:
    with SQLiteStore(path) as store:
        for i in range(n):
            store.put_result(result(f"w{worker}-{i:04d}", generation=i % 7, worker=worker))


def test_two_processes_write_concurrently_and_all_land(tmp_path):
    path = str(tmp_path / "shared.db")
    SQLiteStore(path).close()  # create the schema before both start
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_results, args=(path, w, 200)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    with SQLiteStore(path) as store:
        assert store.count_results("exp") == 400
        assert {d["worker"] for d in store.find_results("exp")} == {0, 1}


def _record_from_process(path: str, worker: int, start, results) -> None:
    with SQLiteStore(path) as store:
        start.wait(60)
        returned = store.record_result(result("r1", fitness=float(worker), worker=worker))
        results.put((worker, returned))


def test_two_processes_recording_one_result_store_exactly_one(tmp_path):
    path = str(tmp_path / "shared.db")
    with SQLiteStore(path) as store:
        store.add_result(result("r1", fitness=None, error="lost", transient=True))
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_record_from_process, args=(path, w, start, results)) for w in (0, 1)]
    for p in procs:
        p.start()
    start.set()
    returned = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    with SQLiteStore(path) as store:
        stored = store.get_result("r1")
    winner = stored["worker"]
    assert returned[winner] is None  # the one that wrote was told so
    assert returned[1 - winner] == stored  # the other was handed the winner's result


def _take_from_process(path: str, holder: dict, start, results) -> None:
    with SQLiteStore(path) as store:
        start.wait(60)
        results.put((holder["id"], store.take_lease("exp", holder, stale_s=30.0, now=1000.0)))


def test_two_processes_taking_one_lease_only_one_gets_it(tmp_path):
    path = str(tmp_path / "shared.db")
    SQLiteStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_take_from_process, args=(path, h, start, results)) for h in (HOLDER_A, HOLDER_B)]
    for p in procs:
        p.start()
    start.set()
    returned = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=120)
    refused = [held for held in returned.values() if held is not None]
    assert len(refused) == 1  # one took it, the other was shown the first one's lease
    winner = next(i for i, held in returned.items() if held is None)
    assert refused[0]["id"] == winner


def test_a_store_file_written_before_plans_and_leases_gains_their_tables(tmp_path):
    path = tmp_path / "old.db"
    with SQLiteStore(path) as store:
        store.put_result(result("r1"))
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE planned")
        conn.execute("DROP TABLE leases")
    with SQLiteStore(path) as store:
        store.add_plan("exp", 0, "evaluate", ["r1"])
        assert store.planned("exp", 0, "evaluate", "r1") is True
        assert store.take_lease("exp", HOLDER_A, stale_s=30.0, now=1000.0) is None
        assert store.get_result("r1") == result("r1")


def _write_one_from_child(store: SQLiteStore) -> None:
    store.put_result(result("from-child"))


def test_store_opened_before_fork_works_in_child(tmp_path):
    store = SQLiteStore(tmp_path / "forked.db")
    store.put_result(result("from-parent"))
    child = multiprocessing.get_context("fork").Process(target=_write_one_from_child, args=(store,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert [d["_id"] for d in store.find_results("exp")] == ["from-child", "from-parent"]
    store.close()


def test_sqlite_file_uses_wal(tmp_path):
    SQLiteStore(tmp_path / "w.db").close()
    with sqlite3.connect(tmp_path / "w.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_closed_store_refuses_use(tmp_path):
    store = SQLiteStore(tmp_path / "c.db")
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.get_result("r1")


# open_store URLs


def test_open_store_relative_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///runs/rel.db") as store:
        store.put_experiment("x", {})
    assert (tmp_path / "runs" / "rel.db").is_file()
    with open_store(f"sqlite:///{tmp_path}/abs.db") as store:  # tmp_path starts with "/"
        store.put_experiment("x", {})
    assert (tmp_path / "abs.db").is_file()


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("mongodb://localhost:27017/evo", "evo"),
        ("mongodb+srv://user:pw@cluster.example.com/runs?retryWrites=true", "runs"),
        ("mongodb://db-0:27017,db-1:27017/?replicaSet=rs0", "evoarena"),
        ("mongodb://localhost", "evoarena"),
    ],
)
def test_open_store_mongo_url_opens_database_it_names(monkeypatch, url, database):
    clients = {}

    def client_for(url):  # no server here: the store gets mongomock, and the URL is recorded
        return clients.setdefault(url, mongomock.MongoClient())

    monkeypatch.setattr(mongo, "MongoClient", client_for)
    with mongomock_accepting_sort(), open_store(url) as store:
        assert isinstance(store, MongoStore) and store.database == database
        store.put_result(result("r1"))
        assert list(clients) == [url]
        assert clients[url][database].results.find_one({"_id": "r1"}) == result("r1")


@pytest.mark.parametrize("url", ["postgres://x/y", "runs/x.db", "sqlite:///", ""])
def test_open_store_unknown_url_lists_accepted(url):
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store(url)


def test_open_store_error_never_shows_a_password():
    with pytest.raises(ValueError) as error:
        open_store("postgres://evo:hunter2@db.example/evo")
    assert "hunter2" not in str(error.value) and "evo:***@db.example" in str(error.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mongodb://evo:hunter2@db:27017/evo", "mongodb://evo:***@db:27017/evo"),
        ("mongodb+srv://evo:hun%40ter2@c.example/x", "mongodb+srv://evo:***@c.example/x"),
        ("mongodb://evo:hun@ter/2@db/evo", "mongodb://evo:***@db/evo"),  # unescaped @ and /
        ("mongodb://evo@db/evo", "mongodb://evo@db/evo"),  # no password, nothing to hide
        ("mongodb://db/evo?authSource=admin", "mongodb://db/evo?authSource=admin"),
        (
            (
                "mongodb://db/?tlsCertificateKeyFilePassword=hunter2"
                "&authMechanismProperties=AWS_SESSION_TOKEN:t0k"
            ),
            "mongodb://db/?tlsCertificateKeyFilePassword=***&authMechanismProperties=***",
        ),
        ("sqlite:///runs/x.db", "sqlite:///runs/x.db"),
        ("runs/x.db", "runs/x.db"),
    ],
)
def test_redact_hides_passwords_and_keeps_the_rest(url, shown):
    assert redact(url) == shown


# MongoDB only


def test_mongo_indexes_exist_after_opening_and_opening_again_is_harmless(mongo_db):
    store, db = mongo_db
    with MongoStore(store.url, database=store.database, client=None if store.url else db.client):
        pass
    results = db.results.index_information()
    assert results["results_by_step"]["key"] == [("experiment", 1), ("generation", 1), ("op", 1)]
    assert results["results_in_order"]["key"] == [("experiment", 1), ("generation", 1), ("_id", 1)]
    generations = db.generations.index_information()
    assert generations["generations_by_step"]["key"] == [("experiment", 1), ("generation", 1)]
    assert generations["generations_by_step"]["unique"] is True


def test_mongo_stores_documents_as_they_are(mongo_db):
    store, db = mongo_db
    store.put_result(result("r1", fitness=math.nan, genome={"deltas": [[3, 0.02, "all"]]}))
    store.put_generation("exp", 4, {"best": 0.5})
    store.put_experiment("exp", {"kind": "ga"})
    raw = db.results.find_one({"_id": "r1"})
    assert math.isnan(raw.pop("fitness"))
    assert raw == result("r1", genome={"deltas": [[3, 0.02, "all"]]})
    assert db.generations.find_one() == {
        "_id": "exp:000004", "experiment": "exp", "generation": 4, "best": 0.5
    }
    assert db.experiments.find_one() == {"_id": "exp", "kind": "ga"}


def test_mongo_duplicate_ids_in_one_batch_keep_the_last(mongo_db):
    store, _ = mongo_db
    store.put_results([result("r1", fitness=1), result("r2"), result("r1", fitness=2)])
    assert store.get_result("r1")["fitness"] == 2 and store.count_results("exp") == 2


def test_mongo_closed_store_refuses_use(mongo_db):
    store, _ = mongo_db
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.get_result("r1")


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The backoff waits of the retry loop, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(mongo.time, "sleep", waited.append)
    return waited


def failing(monkeypatch, method: str, times: int, error: Exception) -> list[int]:
    """Make mongomock's Collection.<method> raise `error` on its first `times` calls."""
    calls: list[int] = []
    original = getattr(Collection, method)

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Collection, method, flaky)
    return calls


@pytest.mark.parametrize(
    "error",
    [AutoReconnect("reset"), NotPrimaryError("not primary"), NetworkTimeout("timed out")],
    ids=lambda e: type(e).__name__,
)
def test_mongo_write_retried_after_connection_failure(monkeypatch, tmp_path, waits, error):
    with mongomock_store(tmp_path) as store:
        calls = failing(monkeypatch, "bulk_write", 2, error)
        store.put_results([result("r1"), result("r2")])
        assert len(calls) == 3 and waits == [0.2, 0.4]
        assert store.count_results("exp") == 2


def test_mongo_read_retried_after_auto_reconnect(monkeypatch, tmp_path, waits):
    with mongomock_store(tmp_path) as store:
        store.put_generation("exp", 3, {"best": 1.0})
        calls = failing(monkeypatch, "find_one", 2, AutoReconnect("primary stepped down"))
        assert store.last_generation("exp") == 3
        assert len(calls) == 3 and waits == [0.2, 0.4]


def test_mongo_gives_up_after_bounded_tries_with_clear_error(monkeypatch, waits):
    client = mongomock.MongoClient()
    with MongoStore("mongodb://evo:hunter2@db.example/evo", client=client) as store:
        calls = failing(monkeypatch, "find_one", 100, AutoReconnect("connection refused"))
        with pytest.raises(StoreUnavailable) as error:
            store.get_result("r1")
    message = str(error.value)
    assert len(calls) == mongo.TRIES == 5 and waits == [0.2, 0.4, 0.8, 1.6]
    assert "5 tries" in message and "read result 'r1'" in message
    assert "connection refused" in message and "mongodb://evo:***@db.example/evo" in message
    assert "hunter2" not in message and isinstance(error.value.__cause__, AutoReconnect)


def test_mongo_other_errors_are_not_retried(monkeypatch, tmp_path, waits):
    with mongomock_store(tmp_path) as store:
        calls = failing(monkeypatch, "replace_one", 100, DuplicateKeyError("E11000"))
        with pytest.raises(DuplicateKeyError):
            store.put_experiment("exp", {})
        assert len(calls) == 1 and waits == []


def test_mongo_record_result_retried_after_connection_failure(monkeypatch, tmp_path, waits):
    with mongomock_store(tmp_path) as store:
        calls = failing(monkeypatch, "replace_one", 1, AutoReconnect("reset"))
        assert store.record_result(result("r1", fitness=0.5)) is None
        assert len(calls) == 2 and waits == [0.2]
        assert store.get_result("r1") == result("r1", fitness=0.5)


def test_mongo_add_plan_sent_again_after_a_dropped_connection_plans_each_id_once(mongo_db, monkeypatch, waits):
    store, db = mongo_db
    original = Collection.insert_many

    def lands_then_drops(self, *args, **kwargs):  # the write lands, its answer is lost
        monkeypatch.setattr(Collection, "insert_many", original)
        original(self, *args, **kwargs)
        raise AutoReconnect("reset after the write")

    monkeypatch.setattr(Collection, "insert_many", lands_then_drops)
    store.add_plan("exp", 0, "evaluate", ["a", "b", "b"])
    assert waits == [0.2]
    assert sorted(d["id"] for d in db.planned.find()) == ["a", "b"]


def test_mongo_store_makes_a_new_client_in_a_forked_child(monkeypatch):
    made: list[mongomock.MongoClient] = []

    def new_client(url):
        made.append(mongomock.MongoClient())
        return made[-1]

    monkeypatch.setattr(mongo, "MongoClient", new_client)
    store = MongoStore("mongodb://db/evo")
    store.get_result("r1")
    assert len(made) == 1
    monkeypatch.setattr(mongo.os, "getpid", lambda: -42)  # as if this were a forked child
    store.get_result("r1")
    assert len(made) == 2 and made[0] in mongo._inherited  # the parent's client is left alone
    store.close()


def _write_one_from_mongo_child(store: MongoStore) -> None:
    store.put_result(result("from-child"))


@pytest.mark.skipif(not MONGO_URL, reason="needs a MongoDB server at EVOARENA_TEST_MONGO_URL")
def test_mongo_store_opened_before_fork_works_in_child(tmp_path):
    with real_mongodb(tmp_path) as store:
        store.put_result(result("from-parent"))
        child = multiprocessing.get_context("fork").Process(
            target=_write_one_from_mongo_child, args=(store,)
        )
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        assert [d["_id"] for d in store.find_results("exp")] == ["from-child", "from-parent"]


# arena collections (pure_gen, pure_disc, pure_match_trace)

from evoarena.store.base import ARENA_COLLECTIONS  # noqa: E402  (the lead exports it from store)


def arena_doc(_id: str, experiment: str = "exp", **more):
    return {"_id": _id, "experiment": experiment, **more}


def ids(docs):
    return [d["_id"] for d in docs]


@pytest.mark.parametrize("collection", ARENA_COLLECTIONS)
def test_arena_doc_round_trips_in_each_collection(store, collection):
    doc = arena_doc("g1", round=3, player=1, role="gen", trace="t1", losses=[0.5, 0.25], alive=True)
    store.put_docs(collection, [doc])
    assert store.get_doc(collection, "g1") == doc
    assert store.get_doc(collection, "g2") is None


def test_gen_doc_points_to_its_trace_doc(store):
    store.put_docs("pure_match_trace", [arena_doc("t-r3-g1-d2", losses=[0.7, 0.6, 0.4])])
    store.put_docs("pure_gen", [arena_doc("g1", round=3, trace="t-r3-g1-d2")])
    trace = store.get_doc("pure_match_trace", store.get_doc("pure_gen", "g1")["trace"])
    assert trace == arena_doc("t-r3-g1-d2", losses=[0.7, 0.6, 0.4])


def test_arena_upsert_replaces_whole_doc_and_redelivery_never_duplicates(store):
    store.put_docs("pure_gen", [arena_doc("g1", fitness=0.1, stale="yes")])
    store.put_docs("pure_gen", [arena_doc("g1", fitness=0.9)])
    store.put_docs("pure_gen", [arena_doc("g1", fitness=0.9)])
    assert store.get_doc("pure_gen", "g1") == arena_doc("g1", fitness=0.9)
    assert store.count_docs("pure_gen", "exp") == 1


def test_arena_upsert_can_move_doc_to_other_experiment(store):
    store.put_docs("pure_disc", [arena_doc("d1", experiment="old")])
    store.put_docs("pure_disc", [arena_doc("d1", experiment="new")])
    assert store.find_docs("pure_disc", "old") == []
    assert store.find_docs("pure_disc", "new") == [arena_doc("d1", experiment="new")]


def test_arena_duplicate_ids_in_one_batch_keep_the_last(store):
    store.put_docs("pure_gen", [arena_doc("g1", v=1), arena_doc("g2"), arena_doc("g1", v=2)])
    assert store.get_doc("pure_gen", "g1") == arena_doc("g1", v=2)
    assert store.count_docs("pure_gen", "exp") == 2


def test_put_docs_is_all_or_nothing(store):
    bad = {"_id": "g2", "round": 0}
    with pytest.raises(ValueError, match="'experiment'"):
        store.put_docs("pure_gen", [arena_doc("g1"), bad, arena_doc("g3")])
    assert store.count_docs("pure_gen", "exp") == 0
    assert store.get_doc("pure_gen", "g1") is None


def test_put_docs_of_nothing_writes_nothing(store):
    store.put_docs("pure_gen", [])
    assert store.count_docs("pure_gen", "exp") == 0


@pytest.mark.parametrize("key", ["_id", "experiment"])
def test_arena_doc_missing_key_refused_naming_it(store, key):
    doc = arena_doc("g1")
    del doc[key]
    with pytest.raises(ValueError, match=f"pure_gen doc lacks the required key '{key}'"):
        store.put_docs("pure_gen", [doc])
    assert store.find_docs("pure_gen", "exp") == []


@pytest.mark.parametrize(
    ("key", "value"), [("_id", 7), ("_id", None), ("experiment", b"exp"), ("experiment", ["exp"])]
)
def test_arena_doc_mistyped_key_refused_naming_it(store, key, value):
    doc = {**arena_doc("g1"), key: value}
    with pytest.raises(ValueError, match=f"pure_disc doc key '{key}' must be str"):
        store.put_docs("pure_disc", [doc])
    assert store.count_docs("pure_disc", "exp") == 0


def test_arena_doc_that_is_not_a_dict_refused(store):
    with pytest.raises(ValueError, match="a pure_gen doc must be a dict, got list"):
        store.put_docs("pure_gen", [["_id", "g1"]])


@pytest.mark.parametrize(
    "use",
    [
        lambda s: s.put_docs("pure_gene", [arena_doc("g1")]),
        lambda s: s.get_doc("pure_gene", "g1"),
        lambda s: s.find_docs("pure_gene", "exp"),
        lambda s: s.count_docs("pure_gene", "exp", round=1),
    ],
    ids=["put_docs", "get_doc", "find_docs", "count_docs"],
)
def test_unknown_collection_refused_listing_accepted(store, use):
    with pytest.raises(ValueError) as error:
        use(store)
    assert str(error.value) == (
        "unknown arena collection 'pure_gene'; accepted: pure_gen, pure_disc, pure_match_trace"
    )


@pytest.mark.parametrize("collection", ["results", "experiments", "pure_gen; DROP TABLE results"])
def test_other_tables_are_not_arena_collections(store, collection):
    store.put_result(result("r1"))
    with pytest.raises(ValueError, match="unknown arena collection"):
        store.find_docs(collection, "exp")
    assert store.get_result("r1") == result("r1")


def _arena_population(store):
    store.put_docs(
        "pure_gen",
        [
            arena_doc("g-r1-p2", round=1, player=2, role="gen"),
            arena_doc("g-r3-p1", round=3, player=1, role="gen"),
            arena_doc("g-r3-p2", round=3, player=2, role="gen"),
            arena_doc("d-r3-p1", round=3, player=1, role="disc"),
            arena_doc("a-r3-p1", round=3, player=1, role="gen"),
            arena_doc("x-r3-p1", experiment="other", round=3, player=1, role="gen"),
        ],
    )


def test_find_docs_filters_by_experiment_and_fields_sorted_by_id(store):
    _arena_population(store)
    assert ids(store.find_docs("pure_gen", "exp")) == [
        "a-r3-p1", "d-r3-p1", "g-r1-p2", "g-r3-p1", "g-r3-p2"
    ]
    assert ids(store.find_docs("pure_gen", "exp", round=3)) == [
        "a-r3-p1", "d-r3-p1", "g-r3-p1", "g-r3-p2"
    ]
    assert ids(store.find_docs("pure_gen", "exp", role="disc")) == ["d-r3-p1"]
    assert ids(store.find_docs("pure_gen", "exp", round=3, player=1, role="gen")) == [
        "a-r3-p1", "g-r3-p1"
    ]
    assert ids(store.find_docs("pure_gen", "exp", round=1, player=1)) == []
    assert ids(store.find_docs("pure_gen", "exp", missing_field=1)) == []
    assert ids(store.find_docs("pure_gen", "other", round=3)) == ["x-r3-p1"]
    assert store.find_docs("pure_gen", "nobody") == []


def test_find_docs_returns_whole_docs(store):
    _arena_population(store)
    assert store.find_docs("pure_gen", "exp", round=1) == [
        arena_doc("g-r1-p2", round=1, player=2, role="gen")
    ]


def test_count_docs_matches_find_docs(store):
    _arena_population(store)
    assert store.count_docs("pure_gen", "exp") == 5
    assert store.count_docs("pure_gen", "exp", round=3) == 4
    assert store.count_docs("pure_gen", "exp", round=3, player=1, role="gen") == 2
    assert store.count_docs("pure_gen", "exp", role="judge") == 0
    assert store.count_docs("pure_gen", "other") == 1
    assert store.count_docs("pure_disc", "exp") == 0


def test_filter_compares_values_with_their_types(store):
    store.put_docs(
        "pure_disc",
        [
            arena_doc("bool-true", v=True),
            arena_doc("int-1", v=1),
            arena_doc("float-1", v=1.0),
            arena_doc("str-1", v="1"),
            arena_doc("list-1", v=[1, "1"]),
            arena_doc("dict-1", v={"1": 1}),
            arena_doc("none", v=None),
            arena_doc("bool-false", v=False),
            arena_doc("int-0", v=0),
        ],
    )
    assert ids(store.find_docs("pure_disc", "exp", v=True)) == ["bool-true"]
    assert ids(store.find_docs("pure_disc", "exp", v=False)) == ["bool-false"]
    assert ids(store.find_docs("pure_disc", "exp", v=0)) == ["int-0"]
    # 1 and 1.0 are the same number (as in MongoDB); True is not 1, "1" is not 1
    assert [i for i in ids(store.find_docs("pure_disc", "exp", v=1)) if i != "list-1"] == [
        "float-1", "int-1"
    ]
    assert ids(store.find_docs("pure_disc", "exp", v=1.0)) == ids(
        store.find_docs("pure_disc", "exp", v=1)
    )
    assert [i for i in ids(store.find_docs("pure_disc", "exp", v="1")) if i != "list-1"] == [
        "str-1"
    ]
    assert ids(store.find_docs("pure_disc", "exp", v='{"1":1}')) == []
    assert ids(store.find_docs("pure_disc", "exp", v="null")) == []


def test_filter_on_non_ascii_and_quoted_strings(store):
    name = 'gén 😀 "q" \\ x'
    store.put_docs("pure_gen", [arena_doc("g1", name=name), arena_doc("g2", name="gen")])
    assert ids(store.find_docs("pure_gen", "exp", name=name)) == ["g1"]


def test_docs_with_nan_or_infinity_are_still_filtered(store):
    # SQLite's JSON functions cannot parse NaN or Infinity; such docs must still be found.
    store.put_docs(
        "pure_gen",
        [
            arena_doc("g1", round=3, fitness=math.nan),
            arena_doc("g2", round=3, fitness=0.5),
            arena_doc("g3", round=4, fitness=math.inf),
            arena_doc("g4", round=3, fitness=-math.inf, role="gen"),
        ],
    )
    assert ids(store.find_docs("pure_gen", "exp", round=3)) == ["g1", "g2", "g4"]
    assert ids(store.find_docs("pure_gen", "exp", round=4)) == ["g3"]
    assert ids(store.find_docs("pure_gen", "exp", fitness=math.inf)) == ["g3"]
    assert ids(store.find_docs("pure_gen", "exp", round=3, role="gen")) == ["g4"]
    assert store.count_docs("pure_gen", "exp", round=3) == 3
    assert store.count_docs("pure_gen", "exp", round=4) == 1


@pytest.mark.parametrize(
    "key",
    [
        "round') OR 1=1 --",
        "x', '$.y",
        "$where",
        "a.b",
        "1st",
        "round; DROP TABLE pure_gen",
        "",
    ],
)
def test_hostile_filter_key_refused(store, key):
    store.put_docs("pure_gen", [arena_doc("g1", round=3)])
    with pytest.raises(ValueError, match="is not a plain field name"):
        store.find_docs("pure_gen", "exp", **{key: 3})
    with pytest.raises(ValueError, match="is not a plain field name"):
        store.count_docs("pure_gen", "exp", **{key: 3})
    assert store.find_docs("pure_gen", "exp") == [arena_doc("g1", round=3)]


@pytest.mark.parametrize(
    "value",
    [None, {"$ne": 0}, [3], math.nan, b"3"],
    ids=["None", "operator", "list", "NaN", "bytes"],
)
def test_filter_value_that_is_not_a_scalar_refused(store, value):
    store.put_docs("pure_gen", [arena_doc("g1", round=3)])
    with pytest.raises(ValueError, match=r"filter round=.*accepted values are str, int, bool"):
        store.find_docs("pure_gen", "exp", round=value)


def test_arena_collections_are_separate(store):
    store.put_docs("pure_gen", [arena_doc("p1", role="gen")])
    store.put_docs("pure_disc", [arena_doc("p1", role="disc")])
    assert store.get_doc("pure_gen", "p1") == arena_doc("p1", role="gen")
    assert store.get_doc("pure_disc", "p1") == arena_doc("p1", role="disc")
    assert store.get_doc("pure_match_trace", "p1") is None
    assert ids(store.find_docs("pure_disc", "exp", role="gen")) == []
    assert store.count_docs("pure_match_trace", "exp") == 0
    assert store.get_result("p1") is None


def test_arena_nan_infinity_and_floats_round_trip_exactly(store):
    values = [0.1 + 0.2, 1e-310, 2.0**-1074, 1.7976931348623157e308, -0.0]
    store.put_docs("pure_match_trace", [arena_doc("t1", loss=math.nan, high=math.inf, v=values)])
    back = store.get_doc("pure_match_trace", "t1")
    assert math.isnan(back["loss"]) and back["high"] == math.inf
    assert [v.hex() for v in back["v"]] == [v.hex() for v in values]
    [found] = store.find_docs("pure_match_trace", "exp")
    assert [v.hex() for v in found["v"]] == [v.hex() for v in values]


def test_arena_returned_docs_are_copies_and_do_not_alias_caller_docs(store):
    doc = arena_doc("g1", round=3, losses=[1.0])
    store.put_docs("pure_gen", [doc])
    doc["losses"].append(2.0)
    store.get_doc("pure_gen", "g1")["losses"].append(3.0)
    store.find_docs("pure_gen", "exp")[0]["round"] = 99
    store.find_docs("pure_gen", "exp", round=3)[0]["losses"].clear()
    assert store.get_doc("pure_gen", "g1") == arena_doc("g1", round=3, losses=[1.0])


def test_sqlite_arena_tables_have_the_documented_columns(tmp_path):
    SQLiteStore(tmp_path / "a.db").close()
    with sqlite3.connect(tmp_path / "a.db") as conn:
        for name in ARENA_COLLECTIONS:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({name})")]
            assert columns == ["_id", "experiment", "doc"]


def test_mongo_arena_indexes_exist(mongo_db):
    _, db = mongo_db
    for name in ARENA_COLLECTIONS:
        index = db[name].index_information()[f"{name}_by_experiment"]
        assert index["key"] == [("experiment", 1), ("_id", 1)]


def test_mongo_stores_arena_documents_as_they_are(mongo_db):
    store, db = mongo_db
    store.put_docs("pure_gen", [arena_doc("g1", round=3, trace="t1")])
    assert db.pure_gen.find_one() == arena_doc("g1", round=3, trace="t1")
    assert db.pure_disc.count_documents({}) == 0


def test_mongo_put_docs_retried_after_connection_failure(monkeypatch, tmp_path, waits):
    with mongomock_store(tmp_path) as store:
        calls = failing(monkeypatch, "bulk_write", 2, AutoReconnect("reset"))
        store.put_docs("pure_disc", [arena_doc("d1"), arena_doc("d2")])
        assert len(calls) == 3 and waits == [0.2, 0.4]
        assert store.count_docs("pure_disc", "exp") == 2


def test_mongo_find_docs_gives_up_after_bounded_tries(monkeypatch, tmp_path, waits):
    with mongomock_store(tmp_path) as store:
        calls = failing(monkeypatch, "find", 100, AutoReconnect("connection refused"))
        with pytest.raises(StoreUnavailable, match="find pure_gen"):
            store.find_docs("pure_gen", "exp", round=3)
        assert len(calls) == mongo.TRIES and waits == [0.2, 0.4, 0.8, 1.6]
