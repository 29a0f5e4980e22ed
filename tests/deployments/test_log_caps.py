"""A tenant's log lines are capped per second and per day (services/logcaps.py), through the
real path an agent's batch takes: its WebSocket, the consumer, the sink, `logs_store`, Redis.
Lines over a cap are acknowledged (the agent never resends them) but not stored, and a `system`
line says how many were dropped; the next second's lines are stored again, with no false gap.
The caps are small here; their defaults are in cloud/settings.py."""

from __future__ import annotations

import random

import pytest
from asgiref.sync import sync_to_async

from cloud.deployments.models import LogLine
from cloud.deployments.services import logcaps
from protocol import wire as p
from tests.nodes.test_agent_consumer import _joined_node, _placed, connect, hello, receive, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def clock(monkeypatch):
    """The caps' clock, at a second no other test run counted in (the counters live in Redis)."""
    now = [float(random.randrange(10**9, 2 * 10**9))]
    monkeypatch.setattr(logcaps, "_clock", lambda: now[0])
    return now


def batch(replica_id: str, seqs) -> p.Logs:
    return p.Logs(replica_id=replica_id, lines=[p.LogEntry(seq=s, ts=1_700_000_000.0 + s, stream="stdout",
                                                           message=f"line {s}") for s in seqs])


def stored(replica_id: str) -> list[tuple]:
    return list(LogLine.objects.filter(replica__uid=replica_id).order_by("id").values_list("seq", "stream", "message"))


async def test_lines_over_the_per_second_cap_are_acknowledged_dropped_and_said(settings, clock):
    settings.LOG_LINES_PER_SECOND_PER_TENANT = 100
    settings.LOG_LINES_PER_DAY_PER_TENANT = 0
    node, credential, hardware = await sync_to_async(_joined_node)()
    agent, deployment, replica_id = await _placed(credential, hardware)

    await send(agent, batch(replica_id, range(1, 151)))
    ack = await receive(agent)
    assert isinstance(ack, p.LogsAck) and ack.seq == 150  # every line acknowledged, stored or not
    lines = await sync_to_async(stored)(replica_id)
    assert [seq for seq, stream, _ in lines[:100]] == list(range(1, 101))
    assert len(lines) == 101
    seq, stream, message = lines[100]
    assert (seq, stream) == (150, "system")  # it stands for the last line it dropped
    assert message.startswith("50 lines (seq 101-150) of this replica were dropped") and "100 lines per second" in message

    await send(agent, batch(replica_id, range(151, 161)))  # the same second: nothing fits
    assert (await receive(agent)).seq == 160
    assert (await sync_to_async(stored)(replica_id))[-1][:2] == (160, "system")

    await send(agent, batch(replica_id, range(101, 161)))  # a resend is free, and stores nothing
    assert (await receive(agent)).seq == 160
    assert len(await sync_to_async(stored)(replica_id)) == 102

    clock[0] += 1  # the next second: stored again, and no "never reached the plane" gap line
    await send(agent, batch(replica_id, range(161, 171)))
    assert (await receive(agent)).seq == 170
    tail = (await sync_to_async(stored)(replica_id))[-10:]
    assert [(seq, stream) for seq, stream, _ in tail] == [(s, "stdout") for s in range(161, 171)]
    assert await sync_to_async(LogLine.objects.filter(replica__uid=replica_id, stream="system").count)() == 2
    await agent.disconnect()

    again, _ = await connect(credential)  # a reconnecting agent resumes after what was dropped
    desired = await hello(again)
    assert [(d.replica_id, d.acked_seq) for d in desired.replicas] == [(replica_id, 170)]
    await again.disconnect()


async def test_the_cap_is_the_tenants_and_the_daily_cap_says_so(settings, clock):
    settings.LOG_LINES_PER_SECOND_PER_TENANT = 0
    settings.LOG_LINES_PER_DAY_PER_TENANT = 30
    node, credential, hardware = await sync_to_async(_joined_node)()
    agent, first, noisy = await _placed(credential, hardware)
    await send(agent, batch(noisy, range(1, 41)))
    assert (await receive(agent)).seq == 40
    lines = await sync_to_async(stored)(noisy)
    assert len(lines) == 31 and "30 lines per day" in lines[-1][2] and lines[-1][2].startswith("10 lines (seq 31-40)")
    clock[0] += 3600  # later the same day: still over
    await send(agent, batch(noisy, [41]))
    assert (await receive(agent)).seq == 41
    assert (await sync_to_async(stored)(noisy))[-1] == (41, "system", "1 line (seq 41) of this replica was dropped: "
                                                        "its tenant reached its log limit of 30 lines per day (UTC)")
    # Another tenant's replica on the same node is not held back by the first one's cap.
    agent2, second, quiet = await _placed(credential, hardware)
    await send(agent2, batch(quiet, range(1, 21)))
    ack = await receive(agent2)
    assert isinstance(ack, p.LogsAck) and ack.seq == 20
    assert [seq for seq, _, _ in await sync_to_async(stored)(quiet)] == list(range(1, 21))
    await agent.disconnect()
    await agent2.disconnect()
