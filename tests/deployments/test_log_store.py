"""Storing agents' log batches (cloud/deployments/services/logs.py): once per seq whatever is
resent, a hole never papered over, hostile text stored safely, cursors in commit order, and a
live message per batch that chains onto the one before it."""

from __future__ import annotations

import threading
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, transaction

from cloud.deployments import feeds, selectors
from cloud.deployments.models import LogLine
from cloud.deployments.selectors import LogFilter
from cloud.deployments.services.logs import log_system_line, logs_store
from protocol.wire import LogEntry
from tests.deployments.factories import ReplicaFactory


def entries(seqs, stream="stdout", message="line {}"):
    return [LogEntry(seq=s, ts=1_700_000_000.0 + s, stream=stream, message=message.format(s)) for s in seqs]


@pytest.mark.django_db
def test_a_batch_is_stored_once_and_the_ack_is_the_highest_seq():
    replica = ReplicaFactory()
    assert logs_store(replica=replica, lines=entries(range(1, 6))) == 5
    assert logs_store(replica=replica, lines=entries(range(3, 9))) == 8  # resend overlapping new lines
    assert logs_store(replica=replica, lines=entries(range(1, 9))) == 8
    assert logs_store(replica=replica, lines=[]) == 8
    lines = list(LogLine.objects.filter(replica=replica).order_by("id"))
    assert [line.seq for line in lines] == list(range(1, 9))
    assert [line.message for line in lines] == [f"line {i}" for i in range(1, 9)]


@pytest.mark.django_db
def test_a_hole_in_the_seq_becomes_a_system_line_saying_how_many():
    replica = ReplicaFactory()
    logs_store(replica=replica, lines=entries([1, 2]))
    assert logs_store(replica=replica, lines=entries([6, 7])) == 7
    shown = [(line.seq, line.stream, line.message) for line in LogLine.objects.filter(replica=replica).order_by("id")]
    assert shown[:2] == [(1, "stdout", "line 1"), (2, "stdout", "line 2")]
    assert shown[2][0] is None and shown[2][1] == "system"
    assert "3 lines (seq 3-5)" in shown[2][2] and "never reached" in shown[2][2]
    assert shown[3:] == [(6, "stdout", "line 6"), (7, "stdout", "line 7")]


@pytest.mark.django_db
def test_nul_bytes_and_lone_surrogates_are_stored_as_replacement_characters_and_ansi_kept():
    replica = ReplicaFactory()
    hostile = ["a\x00b", "bad \udc80 half", "\x1b[31mred\x1b[0m \u00e9", "x" * 65536]
    logs_store(replica=replica, lines=[LogEntry(seq=i + 1, ts=1.0, stream="stderr", message=m)
                                       for i, m in enumerate(hostile)])
    stored = [line.message for line in LogLine.objects.filter(replica=replica).order_by("seq")]
    assert stored == ["a\ufffdb", "bad \ufffd half", "\x1b[31mred\x1b[0m \u00e9", "x" * 65536]


@pytest.mark.django_db
def test_the_plane_writes_system_lines_with_no_seq():
    replica = ReplicaFactory()
    logs_store(replica=replica, lines=entries([1]))
    from django.utils import timezone

    log_system_line(replica=replica, message="node went away", ts=timezone.now())
    log_system_line(replica=replica, message="and again", ts=timezone.now())
    assert logs_store(replica=replica, lines=entries([2])) == 2
    assert [(line.seq, line.stream) for line in LogLine.objects.filter(replica=replica).order_by("id")] == [
        (1, "stdout"), (None, "system"), (None, "system"), (2, "stdout")]


@pytest.mark.django_db(transaction=True)
def test_cursors_follow_commit_order_within_a_deployment():
    """Two inserts for one deployment in two connections: the second waits for the first's
    commit, so its ids are greater than every id the first committed."""
    replica = ReplicaFactory()
    other = ReplicaFactory(deployment=replica.deployment)
    first_in = threading.Event()
    release = threading.Event()

    def slow_first():
        with transaction.atomic():
            logs_store(replica=replica, lines=entries(range(1, 4)))
            first_in.set()
            release.wait(5)
        connection.close()

    thread = threading.Thread(target=slow_first)
    thread.start()
    first_in.wait(5)
    second = threading.Thread(target=lambda: (logs_store(replica=other, lines=entries(range(1, 4))), connection.close()))
    second.start()

    def waiting_for_a_lock() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock'")
            return cursor.fetchone()[0]

    for _ in range(500):
        if waiting_for_a_lock():
            break
        time.sleep(0.01)
    assert waiting_for_a_lock() == 1 and second.is_alive()  # waiting for the first's lock
    release.set()
    thread.join(5)
    second.join(5)
    ids = {r: list(LogLine.objects.filter(replica=r).values_list("id", flat=True)) for r in (replica, other)}
    assert max(ids[replica]) < min(ids[other])


@pytest.mark.django_db(transaction=True)
async def test_each_batch_is_published_after_commit_chained_to_the_last_cursor():
    replica = await sync_to_async(ReplicaFactory)()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(feeds.logs_group(replica.deployment_id), channel)
    try:
        await sync_to_async(logs_store)(replica=replica, lines=entries([1, 2]))
        first = await layer.receive(channel)
        await sync_to_async(logs_store)(replica=replica, lines=entries([2, 3]))
        second = await layer.receive(channel)
    finally:
        await layer.group_discard(feeds.logs_group(replica.deployment_id), channel)
    assert first["type"] == "logs.batch" and first["prev"] == 0
    assert [line[0] for line in first["lines"]][-1] == first["last"]
    assert second["prev"] == first["last"] and len(second["lines"]) == 1  # only what was new
    cursor, uid, ordinal, stream, text = second["lines"][0]
    assert (uid, ordinal, stream) == (str(replica.uid), replica.ordinal, "stdout")
    import json

    assert json.loads(text) == {
        "cursor": str(cursor), "replica": str(replica.uid), "ordinal": replica.ordinal,
        "generation": replica.generation, "seq": 3, "ts": "2023-11-14T22:13:23Z", "stream": "stdout",
        "message": "line 3", "continued": False}


@pytest.mark.django_db
def test_a_lost_node_leaves_a_system_line_saying_how_many_lines_went_with_it(settings):
    from datetime import timedelta

    from django.utils import timezone

    from cloud.deployments.services import fleet_sweep
    from cloud.deployments.services.agents import AgentSink
    from nodes.models import Node
    from tests.deployments.factories import NodeFactory

    settings.NODE_LIVENESS_WINDOW_S = 30
    node, other = NodeFactory(last_heartbeat=timezone.now()), NodeFactory(last_heartbeat=timezone.now())
    quiet = ReplicaFactory(node=node, state="running")
    chatty = ReplicaFactory(node=node, state="running")
    elsewhere = ReplicaFactory(node=other, state="running")
    logs_store(replica=chatty, lines=entries(range(1, 41)))
    sink = AgentSink()
    sink.log_heads(node_id=node.pk, heads={str(chatty.uid): 47, str(quiet.uid): 0})
    sink.log_heads(node_id=node.pk, heads={str(elsewhere.uid): 10**6})  # not its replica: ignored
    Node.objects.filter(pk=node.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    fleet_sweep()
    (note,) = LogLine.objects.filter(replica=chatty, stream="system")
    assert note.seq is None and "7 lines (seq 41-47)" in note.message and node.hostname in note.message
    assert "lost" in note.message
    (quiet_note,) = LogLine.objects.filter(replica=quiet, stream="system")
    assert "every line it had reported is here" in quiet_note.message
    assert not LogLine.objects.filter(replica=elsewhere).exists()
    Node.objects.filter(pk=other.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    fleet_sweep()
    assert "lines (seq" not in LogLine.objects.get(replica=elsewhere, stream="system").message


def test_the_fast_frame_renderer_writes_exactly_the_frame():
    from datetime import datetime, timezone as dt_timezone

    render = feeds.LineRenderer(replica_uid="5b0e2c4a-0000-4000-8000-000000000001", ordinal=3, generation=2)
    ts = datetime(2026, 12, 1, 10, 4, 5, 123456, tzinfo=dt_timezone.utc)
    for seq, message, continued in ((7, 'he said "hi"\\ \x1b[31m\u00e9\ufffd\t', True), (None, "system", False)):
        frame = feeds.line_frame(cursor=42, replica_uid="5b0e2c4a-0000-4000-8000-000000000001", ordinal=3,
                                 generation=2, seq=seq, ts=ts, stream="stderr", message=message, continued=continued)
        assert render(cursor=42, seq=seq, ts=ts, stream="stderr", message=message, continued=continued) == \
            feeds.frame_text(frame)


@pytest.mark.django_db
def test_lines_read_as_rows_render_as_the_model_path_does():
    """A tail catching up renders tuples (selectors.log_page(rows=True)); history renders model
    rows. Both say the same of every line, old incarnations and system lines included."""
    replica = ReplicaFactory()
    later = ReplicaFactory(deployment=replica.deployment, ordinal=replica.ordinal, generation=replica.generation + 1,
                           state="stopped")
    logs_store(replica=replica, lines=entries([1, 2, 5]))  # 3-4 missing: a system line
    logs_store(replica=later, lines=[LogEntry(seq=1, ts=1_700_000_009.5, stream="stderr", message="\x1b[1m\u00e9\"",
                                              continued=True)])
    log_filter = LogFilter(replica.deployment_id)
    models = selectors.log_page(log_filter=log_filter, tail=10)
    rows = selectors.log_page(log_filter=log_filter, tail=10, rows=True)
    assert len(rows.items) == 5
    assert feeds.rows_text(rows.items) == [feeds.frame_text(feeds.row_frame(line)) for line in models.items]
