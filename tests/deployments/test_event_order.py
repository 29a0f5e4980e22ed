"""Event ids follow commit order (the trigger of migration 0005): a transaction that wrote an
event first but commits last gets the greater id, so a follower reading "after id N" can never
skip an event that was still uncommitted when it read N."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from cloud.deployments.models import Event
from cloud.deployments.services import event_record
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_transaction_that_commits_last_gets_the_greater_ids():
    tenant = TenantFactory()
    written = threading.Event()
    release = threading.Event()

    def slow():
        with transaction.atomic():
            event_record(tenant_id=tenant.pk, type="slow.first")
            event_record(tenant_id=tenant.pk, type="slow.second")
            written.set()
            release.wait(5)
        connection.close()

    thread = threading.Thread(target=slow)
    thread.start()
    written.wait(5)
    with transaction.atomic():
        event_record(tenant_id=tenant.pk, type="fast")
    fast_id = Event.objects.get(type="fast").pk
    assert not Event.objects.filter(type__startswith="slow").exists()  # not committed yet
    release.set()
    thread.join(5)
    order = list(Event.objects.filter(tenant=tenant).order_by("id").values_list("type", flat=True))
    assert order == ["fast", "slow.first", "slow.second"]
    assert min(Event.objects.filter(type__startswith="slow").values_list("id", flat=True)) > fast_id


def test_a_follower_polling_after_its_last_id_sees_every_event_once_while_writers_race():
    tenant = TenantFactory()
    stop = threading.Event()

    def writer(name):
        n = 0
        while not stop.is_set():
            with transaction.atomic():
                event_record(tenant_id=tenant.pk, type=f"{name}.{n}")
                time.sleep(0.002)  # hold the transaction open a little: commits interleave
            n += 1
        connection.close()

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    seen, last = [], 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        batch = list(Event.objects.filter(tenant=tenant, id__gt=last).order_by("id").values_list("id", "type"))
        if batch:
            seen.extend(batch)
            last = batch[-1][0]
    stop.set()
    for thread in threads:
        thread.join(5)
    seen.extend(Event.objects.filter(tenant=tenant, id__gt=last).order_by("id").values_list("id", "type"))
    everything = list(Event.objects.filter(tenant=tenant).order_by("id").values_list("id", "type"))
    assert len(everything) > 50
    assert seen == everything
