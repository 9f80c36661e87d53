"""A group of siblings' time limits scale with its children, up to the longest op's (fleet/app.py:
message_limits), and the Celery executor sends each message with its own."""

from __future__ import annotations

from evoarena.evolve.ga import GA
from evoarena.fleet.app import TIME_LIMITS, make_app, message_limits, time_limits
from evoarena.fleet.celery_executor import CeleryExecutor
from evoarena.tasks import is_group, pack
from helpers import tiny_spec

LIMITS = {"evaluate": (50.0, 60.0), "train_pair": (500.0, 600.0)}  # (soft, hard): the longest hard limit is 600


def generation_one(children_per_parent: int, eval_group: int) -> list[dict]:
    """tiny.yaml's evaluate messages of generation 1 (two founder parents), packed as an executor packs them."""
    algo = GA(tiny_spec(children_per_parent=children_per_parent, eval_group=eval_group))
    founders = algo.plan(0, None).about
    tasks = algo.plan(1, {"parents": [g.to_json() for g in founders[:2]], "checkpoints": []}).tasks
    return pack(tasks, "evaluate")


def test_a_single_task_gets_its_ops_limits():
    single = next(t for t in generation_one(4, 4) if not is_group(t))

    assert message_limits("evaluate", single, LIMITS) == (50.0, 60.0)
    assert message_limits("train_pair", {"pair": 1}, LIMITS) == (500.0, 600.0)


def test_a_group_gets_its_ops_limits_times_its_children():
    groups = [t for t in generation_one(3, 3) if is_group(t)]

    assert [len(g["children"]) for g in groups] == [3, 3]
    assert message_limits("evaluate", groups[0], LIMITS) == (150.0, 180.0)


def test_a_group_s_limits_stop_at_the_longest_op_s_which_the_broker_s_timeout_is_set_above():
    group = next(t for t in generation_one(16, 16) if is_group(t))

    assert len(group["children"]) == 16  # 16 x 60 s would be 960 s
    assert message_limits("evaluate", group, LIMITS) == (500.0, 600.0)


def test_with_the_default_time_limit_a_group_of_two_or_more_gets_the_arenas_limits():
    limits = time_limits(1800.0)  # EVOARENA_TIME_LIMIT_S's default: evaluate (750, 900), the arena's (1500, 1800)
    pair, many = ({"children": [{}] * n} for n in (2, 64))

    assert message_limits("evaluate", pair, limits) == (1500.0, 1800.0)
    assert message_limits("evaluate", many, limits) == (1500.0, 1800.0)


class Recorder:
    """Stands in for the Celery app: records what send_task is given."""

    def __init__(self):
        self.sent = []

    def send_task(self, name, **options):
        self.sent.append({"name": name, **options})


def test_the_celery_executor_sends_each_message_with_its_own_limits():
    executor = CeleryExecutor.__new__(CeleryExecutor)  # no broker: only the publishing is exercised
    executor.app = Recorder()
    messages = generation_one(3, 3)  # the elite alone, then two groups of 3
    single, group = messages[0], next(t for t in messages if is_group(t))

    executor._publish("evaluate", single, "one")
    executor._publish("evaluate", group, "three")

    soft, hard = TIME_LIMITS["evaluate"]
    longest = max(h for _, h in TIME_LIMITS.values())
    scale = min(3, longest / hard)
    assert [(s["soft_time_limit"], s["time_limit"]) for s in executor.app.sent] == [(soft, hard), (soft * scale, hard * scale)]


def test_celery_puts_a_messages_limits_in_its_headers_where_the_worker_reads_them():
    app = make_app()
    message = app.amqp.as_task_v2("task-1", "evoarena.evaluate", args=({},), soft_time_limit=150.0, time_limit=180.0)

    assert tuple(message.headers["timelimit"]) == (180.0, 150.0)  # (hard, soft): Request.time_limits
