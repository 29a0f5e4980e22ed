"""A log read does bounded work: `GET .../logs` and the WebSocket replay send at most
LOG_READ_BUDGET_BYTES of lines, say so, and give the cursor to go on from; going on from it gives
the rest, with no line missed or repeated, and a replay never skips ahead to live lines. The
budget is small here (a line of 10 KiB costs 10,496 bytes: 10 fit in 100 KiB)."""

from __future__ import annotations

import json
import time

import pytest
from asgiref.sync import sync_to_async

from cloud.deployments import consumers, selectors
from cloud.deployments.models import LogLine
from tests.deployments.test_log_tail import open_tail, store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

BIG = "{:04d} " + "x" * (10 * 1024 - 5)  # a 10 KiB line, numbered
BUDGET = 100 * 1024


@pytest.fixture
def budget(settings):
    settings.LOG_READ_BUDGET_BYTES = BUDGET


def _cast():
    from tests.conftest import client_for
    from tests.deployments.factories import DeploymentFactory, ReplicaFactory
    from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token

    acme = TenantFactory(slug="acme")
    alice = UserFactory(username="alice@example.com")
    MembershipFactory(user=alice, tenant=acme, role="owner")
    deployment = DeploymentFactory(tenant=acme, name="chatty")
    replica = ReplicaFactory(deployment=deployment, ordinal=0)
    return {"deployment": deployment, "replica": replica, "api": client_for(alice, tenant="acme"),
            "token": issue_token(user=alice, scopes="deployments:read").token}


@pytest.fixture
def cast(budget):
    return _cast()


def numbers(lines) -> list[int]:
    return [int(line["message"][:4]) for line in lines]


def test_a_tail_over_the_budget_stops_at_it_and_the_cursor_gives_the_rest(cast):
    store(cast["replica"], range(1, 51), text=BIG)
    url = f"/api/v1/deployments/{cast['deployment'].pk}/logs"
    first = cast["api"].get(url, {"tail": 40}).json()
    # The tail's window is lines 11-50; the budget holds its first ten.
    assert numbers(first["logs"]) == list(range(11, 21))
    assert first["truncated"] is True and first["has_more"] is True
    assert first["next_cursor"] == first["logs"][-1]["cursor"]
    got, cursor = first["logs"], first["next_cursor"]
    while True:
        page = cast["api"].get(url, {"after": cursor, "limit": 10000}).json()
        got += page["logs"]
        assert len(page["logs"]) <= 10
        if not page["has_more"]:
            assert page["truncated"] is False
            break
        cursor = page["next_cursor"]
    assert numbers(got) == list(range(11, 51))  # nothing missed, nothing twice
    small = cast["api"].get(url, {"tail": 5}).json()
    assert numbers(small["logs"]) == list(range(46, 51)) and small["truncated"] is False


def test_a_page_that_holds_all_it_asked_for_is_not_truncated(cast):
    """Ten lines fit the budget; a page of ten holds what was asked, whatever the budget would
    have said of an eleventh."""
    store(cast["replica"], range(1, 21), text=BIG)
    page = cast["api"].get(f"/api/v1/deployments/{cast['deployment'].pk}/logs", {"after": 0, "limit": 10}).json()
    assert numbers(page["logs"]) == list(range(1, 11))
    assert page["has_more"] is True and page["truncated"] is False


def test_a_page_backwards_keeps_the_lines_nearest_its_cursor(cast):
    store(cast["replica"], range(1, 51), text=BIG)
    url = f"/api/v1/deployments/{cast['deployment'].pk}/logs"
    last = LogLine.objects.get(replica=cast["replica"], seq=50).pk
    page = cast["api"].get(url, {"before": last, "limit": 30}).json()
    assert numbers(page["logs"]) == list(range(40, 50)) and page["truncated"] is True and page["has_more"] is True
    page = cast["api"].get(url, {"before": page["prev_cursor"], "limit": 30}).json()
    assert numbers(page["logs"]) == list(range(30, 40))


def _last(deployment_id) -> LogLine:
    return LogLine.objects.filter(deployment_id=deployment_id).select_related("replica").order_by("id").last()


async def replay(deployment_id, token, query) -> tuple[list[dict], dict | None, int | None]:
    """What one connection replays: its lines, its last notice, and its close code (None: it
    went live and stays open, shown by a line stored after the replay's last: it comes next)."""
    last = await sync_to_async(_last)(deployment_id)
    tail, connected = await open_tail(deployment_id, token=token, query=query)
    assert connected
    lines, notice = [], None
    while True:
        output = await tail.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return lines, notice, output.get("code")
        for text in output["text"].split("\n"):
            item = json.loads(text)
            if "type" in item:
                notice = item
            else:
                lines.append(item)
        if notice is None and lines and int(lines[-1]["cursor"]) == last.pk:
            # Every line there is, and no notice: a replay that stopped at its budget had more to
            # send (it never stops at the last line), so this one is live, unless it closes first.
            await sync_to_async(store)(last.replica, [last.seq + 1], text="after the replay")
            after = [json.loads(text) for text in (await tail.receive_from(timeout=5)).split("\n")]
            assert [line["message"] for line in after] == ["after the replay"]
            await tail.disconnect()
            return lines, None, None


async def test_a_replay_at_its_budget_ends_with_the_cursor_and_never_skips_to_live_lines(cast, monkeypatch):
    await sync_to_async(store)(cast["replica"], range(1, 46), text=BIG)
    deployment, token = cast["deployment"].pk, cast["token"]
    real = selectors.log_page

    def slow_page(**kwargs):
        time.sleep(0.3)  # the replay's first read is slow: live lines commit meanwhile
        return real(**kwargs)

    monkeypatch.setattr(consumers.selectors, "log_page", slow_page)
    tail, _ = await open_tail(deployment, token=token, query="?after=0")
    await sync_to_async(store)(cast["replica"], range(46, 51), text=BIG)  # live lines, during the replay
    first = []
    while len(first) < 10:
        first += [json.loads(text) for text in (await tail.receive_from(timeout=5)).split("\n")]
    notice = json.loads(await tail.receive_from(timeout=5))
    monkeypatch.setattr(consumers.selectors, "log_page", real)
    assert (await tail.receive_output(timeout=5)) == {"type": "websocket.close", "code": consumers.CLOSE_REPLAY_BUDGET}
    assert numbers(first) == list(range(1, 11))  # the budget's worth, from the start
    assert notice["type"] == "truncated" and notice["next_cursor"] == first[-1]["cursor"]
    assert notice["budget_bytes"] == BUDGET
    got = first
    for _ in range(10):  # go on from each cursor until the replay reaches the live end
        lines, notice, code = await replay(deployment, token, f"?after={notice['next_cursor']}")
        got += lines
        if notice is None:
            assert code is None
            break
        assert code == consumers.CLOSE_REPLAY_BUDGET and notice["next_cursor"] == lines[-1]["cursor"]
    assert numbers(got) == list(range(1, 51))
    cursors = [int(line["cursor"]) for line in got]
    assert cursors == sorted(set(cursors))


async def test_a_tail_replay_starts_at_its_window_and_stops_at_the_budget(cast):
    await sync_to_async(store)(cast["replica"], range(1, 51), text=BIG)
    lines, notice, code = await replay(cast["deployment"].pk, cast["token"], "?tail=30")
    assert numbers(lines) == list(range(21, 31)) and code == consumers.CLOSE_REPLAY_BUDGET
    assert notice["next_cursor"] == lines[-1]["cursor"]
