"""The fleet's queues as the RabbitMQ management API reports them (EVOARENA_MANAGEMENT_URL, e.g.
http://guest:guest@127.0.0.1:15672): what `evoarena status --watch` shows beside the store's view.
The queues are those of the broker URL's virtual host (EVOARENA_BROKER_URL), not always "/"."""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request

from evoarena.fleet.app import dead_letter_queue


def broker_vhost(broker_url: str) -> str:
    """The virtual host a broker URL names, as kombu reads it: amqp://h// and amqp://h are "/",
    amqp://h/arena is "arena", amqp://h/%2Farena is "/arena"."""
    path = urllib.parse.urlsplit(broker_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def queues(management_url: str, vhost: str = "/") -> list[dict]:
    """Every queue of `vhost`, as /api/queues/<vhost> lists them."""
    parts = urllib.parse.urlsplit(management_url)
    url = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api/queues/{urllib.parse.quote(vhost, safe='')}"
    request = urllib.request.Request(url)
    if parts.username:
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def queue_lines(listed: list[dict], queue: str) -> list[str]:
    """Lines for the fleet of shared queue `queue`: the shared queue, its workers' direct queues
    together, and its dead letters (a count the plugin has not sampled yet shows as ?)."""
    dead = dead_letter_queue(queue).name
    shared = [q for q in listed if q["name"] == queue]
    direct = [q for q in listed if q["name"].endswith(".dq2")
              and (q.get("arguments") or {}).get("x-dead-letter-routing-key") == dead]
    dead_letters = [q for q in listed if q["name"] == dead]

    def count(qs: list[dict], key: str) -> str:
        values = [q.get(key) for q in qs]
        return "?" if any(v is None for v in values) else str(sum(values))

    lines = []
    if shared:
        lines.append(f"queue {queue}: {count(shared, 'messages_ready')} ready, "
                     f"{count(shared, 'messages_unacknowledged')} running, {count(shared, 'consumers')} consumers")
    lines.append(f"direct queues: {len(direct)}, {count(direct, 'messages_ready')} ready, "
                 f"{count(direct, 'messages_unacknowledged')} running")
    if dead_letters:
        lines.append(f"dead letters: {count(dead_letters, 'messages')}")
    return lines
