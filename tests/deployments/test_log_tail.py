"""`WS /ws/v1/deployments/{id}/logs` (cloud/deployments/consumers.py) through the full ASGI
application with Channels' communicator, the Redis channel layer and PostgreSQL: who may
connect (bearer, session, single-use ticket, origin), replay then live with nothing lost or
repeated, filters, a dropped live message recovered, and a client that cannot keep up told
what it missed. The same over a real daphne, with restarts: tests/e2e/test_logs_and_events.py."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from cloud.asgi import application
from cloud.deployments import consumers, feeds, selectors
from cloud.deployments.models import LogLine, Replica
from cloud.deployments.services.logs import logs_store
from protocol.wire import LogEntry
from tests.conftest import client_for
from tests.deployments.factories import DeploymentFactory, ReplicaFactory
from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def _cast():
    acme, evil = TenantFactory(slug="acme"), TenantFactory(slug="evil")
    alice = UserFactory(username="alice@example.com")
    MembershipFactory(user=alice, tenant=acme, role="owner")
    mallory = UserFactory(username="mallory@example.com")
    MembershipFactory(user=mallory, tenant=evil, role="owner")
    deployment = DeploymentFactory(tenant=acme, name="web")
    r0 = ReplicaFactory(deployment=deployment, ordinal=0)
    r1 = ReplicaFactory(deployment=deployment, ordinal=1)
    theirs = DeploymentFactory(tenant=evil, name="mallory-secret-dep")
    ReplicaFactory(deployment=theirs, ordinal=0)
    token = issue_token(user=alice, scopes="deployments:read").token
    return {"acme": acme, "alice": alice, "mallory": mallory, "deployment": deployment, "r0": r0, "r1": r1,
            "theirs": theirs, "token": token}


@pytest.fixture
async def cast():
    return await sync_to_async(_cast)()


def store(replica: Replica, seqs, stream="stdout", text="line {}") -> int:
    return logs_store(replica=replica, lines=[LogEntry(seq=s, ts=1_700_000_000.0 + s, stream=stream,
                                                       message=text.format(s)) for s in seqs])


async def open_tail(deployment_id, *, token=None, query="", headers=()):
    headers = list(headers)
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    communicator = WebsocketCommunicator(application, f"/ws/v1/deployments/{deployment_id}/logs{query}",
                                         headers=headers)
    connected, _ = await communicator.connect()
    return communicator, connected


async def receive(communicator, timeout=5.0) -> list[dict]:
    return [json.loads(line) for line in (await communicator.receive_from(timeout=timeout)).split("\n")]


async def lines_until(communicator, predicate, timeout=5.0) -> list[dict]:
    got: list[dict] = []
    while not predicate(got):
        got.extend(await receive(communicator, timeout))
    return got


async def next_is(tail, replica: Replica, seq: int) -> None:
    """Nothing else was on its way to the tail: a line stored now is the next thing it gets."""
    await sync_to_async(store)(replica, [seq])
    assert [line["seq"] for line in await receive(tail)] == [seq]


async def test_replay_then_live_with_the_history_fields_and_nothing_repeated(cast):
    await sync_to_async(store)(cast["r0"], range(1, 151))
    tail, connected = await open_tail(cast["deployment"].pk, token=cast["token"])
    assert connected
    replay = await lines_until(tail, lambda got: len(got) >= 100)
    assert [line["message"] for line in replay] == [f"line {i}" for i in range(51, 151)]  # tail=100 by default
    assert set(replay[0]) == {"cursor", "replica", "ordinal", "generation", "seq", "ts", "stream", "message", "continued"}
    assert (replay[0]["replica"], replay[0]["ordinal"]) == (str(cast["r0"].uid), 0)
    await sync_to_async(store)(cast["r0"], range(140, 161))  # a resend overlapping ten new lines
    await sync_to_async(store)(cast["r1"], range(1, 3), stream="stderr")
    live = await lines_until(tail, lambda got: len(got) >= 12)
    assert [(line["ordinal"], line["seq"]) for line in live] == [(0, s) for s in range(151, 161)] + [(1, 1), (1, 2)]
    cursors = [int(line["cursor"]) for line in replay + live]
    assert cursors == sorted(set(cursors))
    await next_is(tail, cast["r0"], 161)
    await tail.disconnect()


async def test_after_replays_every_later_line_whatever_tail_says_then_goes_live(cast):
    await sync_to_async(store)(cast["r0"], range(1, 2501))
    cut = await sync_to_async(lambda: LogLine.objects.get(replica=cast["r0"], seq=100).pk)()
    tail, _ = await open_tail(cast["deployment"].pk, token=cast["token"], query=f"?after={cut}&tail=5")
    replay = await lines_until(tail, lambda got: len(got) >= 2400)
    assert [line["seq"] for line in replay] == list(range(101, 2501))
    await sync_to_async(store)(cast["r0"], [2501])
    assert [line["seq"] for line in await receive(tail)] == [2501]
    await tail.disconnect()


async def test_replica_and_stream_filters_apply_to_replay_and_live(cast):
    await sync_to_async(store)(cast["r0"], range(1, 4))
    await sync_to_async(store)(cast["r1"], range(1, 4), stream="stderr")
    by_ordinal, _ = await open_tail(cast["deployment"].pk, token=cast["token"], query="?replica=1")
    by_stream, _ = await open_tail(cast["deployment"].pk, token=cast["token"], query="?stream=stdout")
    assert {(line["ordinal"], line["stream"]) for line in await receive(by_ordinal)} == {(1, "stderr")}
    assert {(line["ordinal"], line["stream"]) for line in await receive(by_stream)} == {(0, "stdout")}
    await sync_to_async(store)(cast["r0"], [4])
    await sync_to_async(store)(cast["r1"], [4], stream="stderr")
    assert [(line["ordinal"], line["seq"]) for line in await receive(by_ordinal)] == [(1, 4)]
    assert [(line["ordinal"], line["seq"]) for line in await receive(by_stream)] == [(0, 4)]
    await by_ordinal.disconnect()
    await by_stream.disconnect()


async def subscribed(cast, query=""):
    """A tail that has replayed line 1 (so it has joined the group and read the head)."""
    await sync_to_async(store)(cast["r0"], [1])
    tail, _ = await open_tail(cast["deployment"].pk, token=cast["token"], query=query)
    assert [line["seq"] for line in await receive(tail)] == [1]
    return tail


async def test_a_live_message_the_channel_layer_dropped_is_read_from_the_database(cast, monkeypatch):
    tail = await subscribed(cast)
    real = feeds.logs_publish
    monkeypatch.setattr(feeds, "logs_publish", lambda **kwargs: None)
    await sync_to_async(store)(cast["r0"], range(2, 6))  # announced to nobody
    monkeypatch.setattr(feeds, "logs_publish", real)
    await sync_to_async(store)(cast["r0"], range(6, 8))  # its prev is not the tail's cursor
    assert [line["seq"] for line in await lines_until(tail, lambda got: len(got) >= 6)] == list(range(2, 8))
    await next_is(tail, cast["r0"], 8)
    await tail.disconnect()


class FakeTransport:
    """What the consumer learns of daphne's send buffer (streams.send_buffer): a test decides,
    and counts how often the consumer asked (it asks before it sends)."""

    buffered = 0
    probes = 0

    @classmethod
    def probe_for(cls, send):
        def probe():
            cls.probes += 1
            return cls.buffered

        return probe

    @classmethod
    async def held_back(cls, tail) -> None:
        """Returns once the consumer, with lines to send, has looked at the full buffer twice (as
        the batch came, and again as it went back to reading PostgreSQL) and sent nothing."""
        asked = cls.probes
        for _ in range(500):
            if cls.probes >= asked + 2:
                break
            await asyncio.sleep(0.01)
        assert cls.probes >= asked + 2, "the consumer never looked at the buffer"
        assert await tail.receive_nothing(timeout=0)


async def test_a_client_that_stalls_briefly_catches_up_with_nothing_lost(cast, monkeypatch):
    monkeypatch.setattr(consumers.LogTailConsumer, "send_buffer", staticmethod(FakeTransport.probe_for))
    FakeTransport.buffered = 0
    tail = await subscribed(cast)
    FakeTransport.buffered = 10 * consumers.HIGH_WATER_BYTES  # the client stopped reading
    await sync_to_async(store)(cast["r0"], range(2, 302))
    await FakeTransport.held_back(tail)  # nothing piles up for it
    FakeTransport.buffered = 0
    got = await lines_until(tail, lambda got: len(got) >= 300)
    assert [line["seq"] for line in got] == list(range(2, 302))
    await tail.disconnect()


async def test_a_client_that_cannot_keep_up_is_told_how_many_lines_it_missed_and_where(cast, monkeypatch):
    monkeypatch.setattr(consumers.LogTailConsumer, "send_buffer", staticmethod(FakeTransport.probe_for))
    monkeypatch.setattr(consumers, "MAX_LAG_LINES", 50)
    FakeTransport.buffered = 0
    await sync_to_async(store)(cast["r0"], range(1, 11))
    tail, _ = await open_tail(cast["deployment"].pk, token=cast["token"])
    assert len(await receive(tail)) == 10
    FakeTransport.buffered = 10 * consumers.HIGH_WATER_BYTES
    await sync_to_async(store)(cast["r0"], range(11, 211))
    await FakeTransport.held_back(tail)
    FakeTransport.buffered = 0
    (notice,) = await receive(tail)
    assert notice["type"] == "missed" and notice["missed"] == 200
    skipped = await sync_to_async(lambda: list(LogLine.objects.filter(
        deployment=cast["deployment"], id__gt=int(notice["after"]), id__lte=int(notice["until"])).values_list("seq", flat=True)))()
    assert sorted(skipped) == list(range(11, 211))  # exactly what it missed, fetchable from history
    await sync_to_async(store)(cast["r0"], [211])
    assert [line["seq"] for line in await receive(tail)] == [211]  # and live again
    await tail.disconnect()


async def test_a_tail_catching_up_while_batches_keep_committing_joins_them_and_goes_live(cast, monkeypatch):
    """Each read of PostgreSQL is slow here, and batches commit during every one: the tail must
    still arrive (joining the batches it was handed meanwhile), every line once, in order."""
    await sync_to_async(store)(cast["r0"], range(1, 3001))
    real = selectors.log_page
    reads = []

    def slow_page(**kwargs):
        reads.append(kwargs.get("after"))
        time.sleep(0.2)
        return real(**kwargs)

    monkeypatch.setattr(consumers.selectors, "log_page", slow_page)
    tail, _ = await open_tail(cast["deployment"].pk, token=cast["token"], query="?after=0")
    for start in range(3001, 6001, 100):  # a batch every ~60 ms for about two seconds
        await sync_to_async(store)(cast["r0"], range(start, start + 100))
        await asyncio.sleep(0.05)
    got = await lines_until(tail, lambda got: len(got) >= 6000, timeout=10)
    assert [line["seq"] for line in got] == list(range(1, 6001))
    # 3,000 lines at 2,000 a page, then what came meanwhile; a tail that waited for a quiet
    # moment would have read again after every batch.
    assert len(reads) <= 4
    monkeypatch.setattr(consumers.selectors, "log_page", real)
    await sync_to_async(store)(cast["r0"], [6001])
    assert [line["seq"] for line in await receive(tail)] == [6001]  # live: no more reads needed
    await next_is(tail, cast["r0"], 6002)
    await tail.disconnect()


async def test_anything_but_valid_credentials_is_refused_before_the_socket_opens(cast):
    deployment = cast["deployment"].pk
    read_less = await sync_to_async(lambda: issue_token(user=cast["alice"], scopes="templates:read").token)()
    for token in (None, "not-a-token", read_less):
        _, connected = await open_tail(deployment, token=token)
        assert not connected
    _, connected = await open_tail(deployment, token=cast["token"], headers=[(b"x-tenant", b"evil")])
    assert not connected  # not a member of that tenant


async def test_another_tenants_deployment_is_refused_exactly_as_a_missing_one(cast):
    answers = []
    for deployment_id in (cast["theirs"].pk, "11111111-2222-3333-4444-555555555555"):
        tail, connected = await open_tail(deployment_id, token=cast["token"])
        assert connected
        answers.append((await tail.receive_from(timeout=5)).replace(str(deployment_id), "<id>"))
        assert (await tail.receive_output(timeout=5)) == {"type": "websocket.close", "code": consumers.CLOSE_NOT_FOUND}
    assert answers[0] == answers[1] and "mallory-secret" not in answers[0]
    assert json.loads(answers[0])["status"] == 404


async def test_a_ticket_opens_one_socket_once_and_only_for_its_deployment(cast):
    await sync_to_async(store)(cast["r0"], [1])

    def ticket_for(deployment_id):
        response = client_for(cast["alice"], scopes="deployments:read", tenant="acme").post(
            f"/api/v1/deployments/{deployment_id}/logs/ticket")
        assert response.status_code == 201, response.content
        return response.json()

    made = await sync_to_async(ticket_for)(cast["deployment"].pk)
    assert made["url"].startswith(f"/ws/v1/deployments/{cast['deployment'].pk}/logs?ticket=gtkt_")
    communicator = WebsocketCommunicator(application, made["url"])
    connected, _ = await communicator.connect()
    assert connected and [line["seq"] for line in await receive(communicator)] == [1]
    await communicator.disconnect()
    again = WebsocketCommunicator(application, made["url"])
    assert not (await again.connect())[0]  # used
    other = await sync_to_async(lambda: DeploymentFactory(tenant=cast["acme"]))()
    wrong = await sync_to_async(ticket_for)(cast["deployment"].pk)
    _, connected = await open_tail(other.pk, query=f"?ticket={wrong['ticket']}")
    assert not connected  # a ticket names its deployment
    theirs = await sync_to_async(lambda: client_for(cast["alice"], scopes="deployments:read", tenant="acme").post(
        f"/api/v1/deployments/{cast['theirs'].pk}/logs/ticket").status_code)()
    assert theirs == 404


async def test_the_dashboard_session_may_follow_logs_from_its_own_origin_only(cast):
    await sync_to_async(store)(cast["r0"], [1])

    def session_cookie():
        client = Client()
        client.force_login(cast["alice"])
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    cookie = f"{settings.SESSION_COOKIE_NAME}={await sync_to_async(session_cookie)()}".encode()
    own = [(b"cookie", cookie), (b"origin", b"http://127.0.0.1:8000")]
    tail, connected = await open_tail(cast["deployment"].pk, query="?tenant=acme", headers=own)
    assert connected and [line["seq"] for line in await receive(tail)] == [1]
    await tail.disconnect()
    _, connected = await open_tail(cast["deployment"].pk, query="?tenant=acme",
                                   headers=[(b"cookie", cookie), (b"origin", b"http://evil.example")])
    assert not connected  # a page elsewhere cannot ride the customer's cookie
    _, connected = await open_tail(cast["deployment"].pk, token=cast["token"], headers=[(b"origin", b"http://evil.example")])
    assert not connected


async def test_bad_query_parameters_close_with_an_error_naming_them(cast):
    for query, field in (("?tail=10001", "tail"), ("?after=abc", "after"), ("?stream=stdin", "stream"),
                         ("?replica=9", "replica")):
        tail, connected = await open_tail(cast["deployment"].pk, token=cast["token"], query=query)
        assert connected
        error = json.loads(await tail.receive_from(timeout=5))
        assert error["type"] == "error" and error["status"] == 400
        assert {e["field"] for e in error["errors"]} == {field}
        assert (await tail.receive_output(timeout=5))["code"] == consumers.CLOSE_BAD_REQUEST


async def test_after_redis_comes_back_empty_the_relay_rejoins_and_live_lines_flow_again(cast, monkeypatch):
    """Redis restarted without its data: the process's relay lost its group membership, and its
    receive failed once. It joins again at once, not at the hourly rejoin; otherwise only the
    tail's look at the head every 5 s would deliver, late."""
    from channels.layers import get_channel_layer

    from cloud.deployments import fanout

    monkeypatch.setattr(fanout, "RETRY_S", 0.05)
    tail = await subscribed(cast)
    layer = get_channel_layer()
    group = feeds.logs_group(cast["deployment"].pk)
    relay = fanout._relays[asyncio.get_running_loop()][group]
    async with layer.connection(layer.consistent_hash(group)) as connection:
        await connection.delete(layer._group_key(group))  # what a restart without persistence forgets
    real, failed = layer.receive, []

    async def receive_failing_once(channel):
        if not failed:
            failed.append(channel)
            raise ConnectionError("Redis went away")
        return await real(channel)

    monkeypatch.setattr(layer, "receive", receive_failing_once)
    await layer.send(relay.channel, {"type": "wake"})  # ends the receive that began before the patch

    async def rejoined() -> bool:
        async with layer.connection(layer.consistent_hash(group)) as connection:
            return await connection.zscore(layer._group_key(group), relay.channel) is not None

    for _ in range(300):
        if failed and await rejoined():
            break
        await asyncio.sleep(0.01)
    assert failed and await rejoined()  # failed once, and back in the group at once
    await sync_to_async(store)(cast["r0"], [2, 3])
    assert [line["seq"] for line in await receive(tail, timeout=2.5)] == [2, 3]
    await tail.disconnect()
