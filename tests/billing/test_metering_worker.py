"""The metering task in real Celery workers (`celery -A cloud worker`, each a process of its own,
on a queue of this run's own, against this test database): run twice, concurrently from two
processes, and after a worker was killed with SIGKILL half-way, it leaves exactly the records
one clean pass would.

To catch a pass half-way, the test holds a tenant's row lock from a connection of its own: a
pass has then claimed its meters and inserted its records, and waits (uncommitted) to append
the charges to that tenant's ledger.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from billing.models import MeterRun, UsageRecord
from cloud.celery import app
from tests.billing.factories import run_on
from tests.deployments.factories import NodeFactory, deployment_for
from tests.factories import HardwareTypeFactory, TenantFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]
REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 5, 4, 9, 0, 0, tzinfo=dt_timezone.utc)
NOW = T0 + timedelta(minutes=10)


def _db_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def wait_for(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class Worker:
    def __init__(self, tmp: Path, queue: str, name: str):
        self.log = tmp / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "DJANGO_SETTINGS_MODULE": "cloud.settings",
               "DATABASE_URL": _db_url(), "CELERY_QUEUE": queue, "DB_POOL": "0"}
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "cloud", "worker", "-Q", queue, "--concurrency", "1",
             "-n", f"{name}-{queue}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            cwd=REPO, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "ready" in self.log.read_text(), timeout=60, what=f"worker {name} to start")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)


@pytest.fixture
def workers(tmp_path):
    queue = f"meter-{secrets.token_hex(4)}"
    started: list[Worker] = []

    def start(name: str) -> Worker:
        worker = Worker(tmp_path, queue, name)
        started.append(worker)
        return worker

    start.queue = queue
    yield start
    for worker in started:
        worker.kill(signal.SIGTERM if worker.proc.poll() is None else signal.SIGKILL)


@pytest.fixture
def fleet():
    """Two tenants, five replicas on 1 or 8 GPUs, all running since T0 on nodes heard from at NOW."""
    h100 = HardwareTypeFactory(slug="h100-w", price_per_gpu_hour=Decimal("2.4900"), allowed_gpu_counts=[1, 8])
    node = NodeFactory(hostname="gpu-w1", hardware_type=h100)
    tenants = [TenantFactory(slug="meter-a"), TenantFactory(slug="meter-b")]
    replicas = []
    for i in range(5):
        deployment = deployment_for(tenants[i % 2], hardware_id=h100.pk, gpus_per_container=8 if i % 2 else 1)
        replicas.append(run_on(deployment.replicas.get(), node=node, started_at=T0 + timedelta(seconds=i),
                               heartbeat=NOW))
    return {"tenants": tenants, "replicas": replicas}


def reference(fleet) -> set[tuple]:
    """What one clean pass to NOW writes: one record per replica, from its start to NOW."""
    out = set()
    for i, replica in enumerate(fleet["replicas"]):
        seconds = 600 - i
        units = 8 if i % 2 else 1
        amount = (Decimal("2.4900") * units * seconds / 3600).quantize(Decimal("0.000001"))
        out.add((replica.pk, T0 + timedelta(seconds=i), NOW, seconds, amount))
    return out


def records() -> set[tuple]:
    return set(UsageRecord.objects.values_list("replica_id", "period_start", "period_end", "seconds", "amount"))


def send(queue: str) -> None:
    app.send_task("billing.meter", kwargs={"now": NOW.isoformat()}, queue=queue)


class TenantLock:
    """A tenant row held FOR UPDATE from a connection of the test's own."""

    def __init__(self, tenant):
        self.conn = psycopg.connect(_db_url().replace("postgres://", "postgresql://"), autocommit=False)
        self.conn.execute("SELECT 1 FROM accounts_tenant WHERE id = %s FOR UPDATE", [tenant.pk])

    def waiters(self) -> list[int]:
        with psycopg.connect(_db_url().replace("postgres://", "postgresql://"), autocommit=True) as other:
            rows = other.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
                "AND query ILIKE '%%accounts_tenant%%FOR UPDATE%%' AND pid <> %s", [self.conn.info.backend_pid],
            ).fetchall()
        return [pid for (pid,) in rows]

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def backend_alive(pid: int) -> bool:
    with psycopg.connect(_db_url().replace("postgres://", "postgresql://"), autocommit=True) as other:
        return other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone() is not None


def test_the_task_run_twice_gives_the_records_of_one_pass(fleet, workers):
    workers("w1")
    send(workers.queue)
    send(workers.queue)
    wait_for(lambda: MeterRun.objects.count() == 2, timeout=60, what="two metering passes")
    assert records() == reference(fleet)
    assert sorted(MeterRun.objects.values_list("records", flat=True)) == [0, 5]


def test_two_workers_metering_at_once_never_meter_a_replica_twice(fleet, workers):
    workers("w1"), workers("w2")
    lock = TenantLock(fleet["tenants"][0])
    try:
        send(workers.queue)
        blocked = wait_for(lock.waiters, timeout=60, what="the first pass to wait for the ledger lock")
        assert len(blocked) == 1
        send(workers.queue)  # the other worker's pass runs while the first holds every meter
        wait_for(lambda: MeterRun.objects.count() == 1, timeout=60, what="the second pass")
        assert MeterRun.objects.get().meters == 0 and records() == set()  # it skipped the claimed meters
    finally:
        lock.release()
    wait_for(lambda: MeterRun.objects.count() == 2, timeout=60, what="the first pass to commit")
    assert records() == reference(fleet)


def test_a_worker_killed_half_way_leaves_nothing_and_the_next_pass_meters_it_all(fleet, workers):
    worker = workers("w1")
    lock = TenantLock(fleet["tenants"][0])
    try:
        send(workers.queue)
        (backend,) = wait_for(lock.waiters, timeout=60, what="the pass to be half-way (records written, uncommitted)")
        worker.kill(signal.SIGKILL)
    finally:
        lock.release()
    # Its database session ends as soon as it tries to answer a client that is gone.
    wait_for(lambda: not backend_alive(backend), timeout=30, what="the killed worker's session to end")
    assert records() == set() and MeterRun.objects.count() == 0  # rolled back: nothing half-written
    workers("w2")
    send(workers.queue)
    wait_for(lambda: MeterRun.objects.count() == 1, timeout=60, what="the next pass")
    assert records() == reference(fleet)
