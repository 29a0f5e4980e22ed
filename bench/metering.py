"""Metering benchmark: the billing.meter pass (usage_close_intervals) over 10,000 running replicas.

Seeds, in a database of its own (`<DATABASE_URL name>_bench_metering`, created and migrated on
first use, emptied on every run), 1,250 nodes of 8 GPUs in 4 locations, 100 tenants and 10,000
running one-GPU replicas (2,000 deployments of 5), each with its meter open as the agent report
would have opened it. Then runs passes a minute apart on a controlled clock (each node heard
from at the pass's time), each writing a usage record and a ledger charge per replica, and
prints each pass's duration and SQL query count. A pass over 1,000 of the replicas first shows
the query count does not grow with the number of replicas.

Target (issue 18): under 2 s per pass at 10,000 replicas; query count independent of it.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

base_url = os.environ.get("DATABASE_URL", "postgres://gantry:gantry@127.0.0.1:5432/gantry")
parts = urlsplit(base_url)
NAME = parts.path.strip("/") + "_bench_metering"
os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path="/" + NAME))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloud.settings")
os.environ["DB_POOL"] = "0"

REPLICAS = int(os.environ.get("BENCH_REPLICAS", "10000"))
PASSES = int(os.environ.get("BENCH_PASSES", "5"))
TENANTS, PER_DEPLOYMENT, GPUS_PER_NODE, LOCATIONS = 100, 5, 8, 4
T0 = datetime(2026, 7, 1, 12, 0, 0, tzinfo=dt_timezone.utc)


def ensure_database() -> None:
    import psycopg

    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (NAME,)).fetchone():
            conn.execute(f'CREATE DATABASE "{NAME}"')


def empty() -> None:
    from django.db import connection

    tables = [m._meta.db_table for app in ("billing", "deployments", "nodes", "accounts")
              for m in __import__("django.apps", fromlist=["apps"]).apps.get_app_config(app).get_models()
              if not m._meta.proxy]
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


def seed(count: int, *, first_index: int = 0) -> None:
    """`count` more running replicas (and what they need), all running since T0."""
    from accounts.models import Tenant
    from billing.models import LedgerEntry, Meter
    from cloud.deployments.models import Deployment, Replica
    from nodes.models import Gpu, HardwareType, Location, Node

    hw, _ = HardwareType.objects.get_or_create(slug="bench-h100", defaults=dict(
        name="8x H100", gpu_model="H100", gpu_memory_gib=80, gpus_per_node=GPUS_PER_NODE, allowed_gpu_counts=[1, 8],
        vcpus_per_gpu=16, memory_gib_per_gpu=200, price_per_gpu_hour=Decimal("2.4900")))
    locations = [Location.objects.get_or_create(slug=f"bench-{i}", defaults={"name": f"Bench {i}", "country": "US"})[0]
                 for i in range(LOCATIONS)]
    if not Tenant.objects.exists():
        tenants = Tenant.objects.bulk_create([Tenant(slug=f"bench-{i:03d}", name=f"Bench {i}", max_gpus=10**6,
                                                     max_deployments=10**6) for i in range(TENANTS)])
        LedgerEntry.objects.bulk_create([
            LedgerEntry(tenant=t, seq=1, kind="credit", amount=Decimal("1000000"), balance_after=Decimal("1000000"),
                        actor_name="bench", reason="bench credit", created_at=T0) for t in tenants])
    tenants = list(Tenant.objects.order_by("pk"))
    first_node = first_index // GPUS_PER_NODE
    nodes = Node.objects.bulk_create([
        Node(hostname=f"bench-{i:05d}", location=locations[i % LOCATIONS], hardware_type=hw, status="online",
             last_heartbeat=T0, simulated=True) for i in range(first_node, first_node + count // GPUS_PER_NODE)])
    Gpu.objects.bulk_create([Gpu(node=n, index=g, uuid=f"GPU-{n.pk}-{g}", pci_bdf=f"0000:{16 + g:02x}:00.0",
                                 model="H100", memory_mib=81559) for n in nodes for g in range(GPUS_PER_NODE)])
    deployments = Deployment.objects.bulk_create([
        Deployment(tenant=tenants[i % TENANTS], name=f"bench-{first_index // PER_DEPLOYMENT + i}", image="bench:1",
                   gpus_per_container=1, hardware_type=hw, replica_count=PER_DEPLOYMENT, status="running",
                   price_per_gpu_hour=hw.price_per_gpu_hour, started_at=T0)
        for i in range(count // PER_DEPLOYMENT)])
    replicas = Replica.objects.bulk_create([
        Replica(deployment=d, ordinal=o, state="running", node=nodes[(i * PER_DEPLOYMENT + o) // GPUS_PER_NODE],
                host_port=30000 + o, started_at=T0, placed_at=T0)
        for i, d in enumerate(deployments) for o in range(PER_DEPLOYMENT)])
    Meter.objects.bulk_create([Meter(replica=r, tenant_id=r.deployment.tenant_id, deployment=r.deployment,
                                     metered_to=T0) for r in replicas])


def one_pass(at: datetime) -> tuple[float, int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from billing.services import usage_close_intervals
    from nodes.models import Node

    Node.objects.update(last_heartbeat=at)  # every node said hello at the pass's time
    with CaptureQueriesContext(connection) as ctx:
        t0 = time.perf_counter()
        run = usage_close_intervals(now=at)
        elapsed = time.perf_counter() - t0
    return elapsed, len(ctx.captured_queries), run.records


def main() -> None:
    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    empty()
    small = REPLICAS // 10
    t0 = time.perf_counter()
    seed(small)
    small_run = one_pass(T0 + timedelta(minutes=1))
    seed(REPLICAS - small, first_index=small)
    print(f"seeded {REPLICAS} running replicas ({REPLICAS // PER_DEPLOYMENT} deployments, {TENANTS} tenants, "
          f"{REPLICAS // GPUS_PER_NODE} nodes) in {time.perf_counter() - t0:.1f} s")
    print(f"  pass over {small:>6} replicas: {small_run[0] * 1000:7.0f} ms, {small_run[1]:3d} queries, "
          f"{small_run[2]} records")
    runs = []
    for i in range(PASSES):
        elapsed, queries, records = one_pass(T0 + timedelta(minutes=2 + i))
        runs.append((elapsed, queries))
        print(f"  pass over {REPLICAS:>6} replicas: {elapsed * 1000:7.0f} ms, {queries:3d} queries, {records} records")
    idle = one_pass(T0 + timedelta(minutes=1 + PASSES))  # same clock as the last: nothing new to close
    print(f"  the last pass again (nothing new): {idle[0] * 1000:7.0f} ms, {idle[1]:3d} queries, {idle[2]} records")
    times = sorted(e for e, _ in runs)
    median, worst = times[len(times) // 2], times[-1]
    constant = len({q for _, q in runs} | {small_run[1]}) == 1
    print(f"  target: under 2 s per pass at {REPLICAS} replicas -> {'met' if median < 2 else 'MISSED'} "
          f"(median {median:.2f} s, worst {worst:.2f} s, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs); query count {'constant' if constant else 'GROWS WITH REPLICAS'}")


if __name__ == "__main__":
    main()
