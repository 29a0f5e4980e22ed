"""Scheduler benchmark: 200 simulated nodes x 8 GPUs, 1,000 deployments, 2 worker processes.

Each node is an HGX-like board (2 NUMA nodes of 4 GPUs). The deployments ask for 1, 2, 4 or 8
GPUs (800 / 130 / 50 / 20 of them, shuffled: 1,420 of the 1,600 GPUs), one replica each. Two
OS processes, released together, each run `schedule_pending()` over the same pending set,
as two Celery workers would. Prints placements/s (target: >= 100), double allocations (must
be 0: a unit claimed twice leaves its first claimant short, since the second write wins) and
fragmentation: free GPUs stranded on partly used nodes, and whole 8-GPU nodes left free.

Runs in a database of its own (`<DATABASE_URL name>_scheduler_bench`), created and migrated
for the run and dropped afterwards; the dev database is never touched.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

base_url = os.environ.get("DATABASE_URL", "postgres://gantry:gantry@127.0.0.1:5432/gantry")
parts = urlsplit(base_url)
SUFFIX = "_scheduler_bench"
DB_NAME = parts.path.strip("/").removesuffix(SUFFIX) + SUFFIX  # the workers inherit the bench URL
BENCH_DB_URL = urlunsplit(parts._replace(path="/" + DB_NAME))
os.environ["DATABASE_URL"] = BENCH_DB_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloud.settings")
os.environ["DB_POOL"] = "0"
# Seeding takes a while on a slow machine; a heartbeat must not go stale under the workers.
os.environ["NODE_LIVENESS_WINDOW_S"] = "3600"
os.environ["CHANNELS_PREFIX"] = "gantry-bench-scheduler"

NODES = 200
NUMA = (4, 4)
GPUS_PER_NODE = sum(NUMA)
MIX = {1: 800, 2: 130, 4: 50, 8: 20}
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
TARGET = 100


def admin_execute(*statements: str) -> None:
    import psycopg

    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def seed() -> None:
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from accounts.models import Tenant
    from cloud.deployments.models import Deployment, Replica
    from cloud.deployments.services.status import PENDING_REASON
    from nodes.models import Gpu, HardwareType, Location, Node

    t0 = time.perf_counter()
    call_command("migrate", verbosity=0)
    hw = HardwareType.objects.create(
        slug="bench-hgx", name="8x H100 80GB SXM (HGX)", gpu_model="NVIDIA H100 80GB HBM3", gpu_memory_gib=80,
        gpus_per_node=GPUS_PER_NODE, allowed_gpu_counts=sorted(MIX), vcpus_per_gpu=16, memory_gib_per_gpu=200,
        price_per_gpu_hour=Decimal("2.49"))
    location = Location.objects.create(slug="bench-1", name="Bench 1", country="US")
    now = timezone.now()
    nodes = Node.objects.bulk_create([
        Node(hostname=f"hgx-{i:03d}.bench", location=location, hardware_type=hw, status=Node.Status.ONLINE,
             last_heartbeat=now, simulated=True, public_address="192.0.2.1")
        for i in range(NODES)
    ])
    Gpu.objects.bulk_create([
        Gpu(node=node, index=i, uuid=f"GPU-{node.pk}-{i}", pci_bdf=f"0000:{0x18 + i:02x}:00.0", model=hw.gpu_model,
            memory_mib=81559, numa_node=numa, nvlink_domain=f"{node.hostname}/nvswitch")
        for node in nodes for i, numa in enumerate(n for n, count in enumerate(NUMA) for _ in range(count))
    ])
    tenant = Tenant.objects.create(slug="bench", name="Bench", max_gpus=100_000, max_deployments=100_000)
    counts = [gpus for gpus, n in MIX.items() for _ in range(n)]
    random.Random(14).shuffle(counts)
    deployments = Deployment.objects.bulk_create([
        Deployment(tenant=tenant, name=f"bench-{i}", image="127.0.0.1:5000/gantry/hello:latest", gpus_per_container=gpus,
                   hardware_type=hw, replica_count=1, price_per_gpu_hour=hw.price_per_gpu_hour,
                   status=Deployment.Status.PENDING, status_reason=PENDING_REASON)
        for i, gpus in enumerate(counts)
    ])
    # created_at follows the shuffled order, which is the order the scheduler takes them in.
    Replica.objects.bulk_create([
        Replica(deployment=d, ordinal=0, generation=1, state=Replica.State.PENDING, reason=PENDING_REASON)
        for d in deployments
    ])
    # Fresh bulk-loaded tables have no statistics yet; without them the planner finds one
    # replica by scanning every pending one. A live database has been analyzed long since.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"seeded {NODES} nodes x {GPUS_PER_NODE} GPUs and {len(deployments)} deployments "
          f"({', '.join(f'{n} x {g} GPU' for g, n in MIX.items())}) in {time.perf_counter() - t0:.1f} s")


def worker() -> None:
    """One scheduling process: ready, wait for the go line, one schedule_pending() pass."""
    import django

    django.setup()
    from django.db import connection

    from cloud.deployments.services import schedule_pending

    connection.ensure_connection()
    print("ready", flush=True)
    sys.stdin.readline()
    t0, cpu0 = time.perf_counter(), time.process_time()
    placed = schedule_pending()
    print(f"{placed} {time.perf_counter() - t0:.3f} {time.process_time() - cpu0:.3f}", flush=True)


def run_workers() -> tuple[float, list[tuple[int, float, float]]]:
    procs = [subprocess.Popen([sys.executable, __file__, "--worker"], cwd=ROOT, env=os.environ.copy(), text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for _ in range(WORKERS)]
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a scheduler worker failed to start")
        t0 = time.perf_counter()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outs = [proc.communicate(timeout=600)[0] for proc in procs]
        wall = time.perf_counter() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    if any(proc.returncode for proc in procs):
        raise SystemExit("a scheduler worker failed")
    results = []
    for out in outs:
        placed, seconds, cpu = out.split()[-3:]
        results.append((int(placed), float(seconds), float(cpu)))
    return wall, results


def report(wall: float, results: list[tuple[int, float, float]]) -> int:
    """Prints the figures; returns the number of double allocations."""
    from cloud.deployments.models import Replica
    from nodes.models import Gpu

    replicas = list(Replica.objects.select_related("deployment").only("pk", "node_id", "deployment__gpus_per_container"))
    held: dict[int, list[int]] = {}
    for node_id, replica_id in Gpu.objects.filter(replica__isnull=False).values_list("node_id", "replica_id"):
        held.setdefault(replica_id, []).append(node_id)
    placed = [r for r in replicas if r.node_id is not None]
    wrong_count = sum(1 for r in placed if len(held.get(r.pk, [])) != r.deployment.gpus_per_container)
    off_node = sum(1 for r in placed for node_id in held.get(r.pk, []) if node_id != r.node_id)
    unplaced_holding = sum(1 for r in replicas if r.node_id is None and r.pk in held)
    double = wrong_count + off_node + unplaced_holding

    free_by_node = Counter({n: 0 for n in Gpu.objects.values_list("node_id", flat=True).distinct()})
    free_by_node.update(Gpu.objects.filter(replica__isnull=True).values_list("node_id", flat=True))
    free_total = sum(free_by_node.values())
    whole = sum(1 for free in free_by_node.values() if free == GPUS_PER_NODE)
    stranded = sum(free for free in free_by_node.values() if 0 < free < GPUS_PER_NODE)
    partly = sum(1 for free in free_by_node.values() if 0 < free < GPUS_PER_NODE)
    waiting = Counter(r.deployment.gpus_per_container for r in replicas if r.node_id is None)
    # A replica of up to 4 GPUs fits one NUMA node; count those that were split anyway.
    size = {r.pk: r.deployment.gpus_per_container for r in placed}
    spans = sum(1 for pk, numas in _numas_by_replica().items() if len(numas) > 1 and size[pk] <= max(NUMA))

    rate = len(placed) / wall if wall else 0.0
    demand = sum(g * n for g, n in MIX.items())
    print(f"{len(placed)} of {len(replicas)} replicas placed by {WORKERS} worker processes in {wall:.2f} s "
          f"({', '.join(f'{p} in {s:.2f} s' for p, s, _ in results)})")
    cpu_ms = sum(c for _, _, c in results) / max(len(placed), 1) * 1000
    print(f"  placements/s: {rate:.0f}  (target >= {TARGET}: {'met' if rate >= TARGET else 'MISSED'}); "
          f"{cpu_ms:.1f} ms of worker CPU per placement; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  double allocations: {double}  (replicas short of or over their count: {wrong_count}, "
          f"units on another node: {off_node}, held by unplaced replicas: {unplaced_holding})"
          + ("" if double == 0 else "  MUST BE 0"))
    print(f"  GPUs: {demand} asked for of {NODES * GPUS_PER_NODE}; {free_total} free after placing")
    print(f"  fragmentation: {stranded} free GPUs stranded on {partly} partly used nodes; {whole} whole "
          f"{GPUS_PER_NODE}-GPU nodes free (at best {free_total // GPUS_PER_NODE})")
    print(f"  replicas of <= {max(NUMA)} GPUs split across NUMA nodes: {spans}")
    if waiting:
        print("  still pending: " + ", ".join(f"{n} x {g} GPU" for g, n in sorted(waiting.items())))
    return double


def _numas_by_replica() -> dict[int, set[int]]:
    from nodes.models import Gpu

    out: dict[int, set[int]] = {}
    for replica_id, numa in Gpu.objects.filter(replica__isnull=False).values_list("replica_id", "numa_node"):
        out.setdefault(replica_id, set()).add(numa)
    return out


def main() -> None:
    admin_execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)', f'CREATE DATABASE "{DB_NAME}"')
    try:
        import django

        django.setup()
        seed()
        from django.db import connection

        connection.close()  # the workers get the database to themselves
        wall, results = run_workers()
        double = report(wall, results)
        connection.close()
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    if double:
        raise SystemExit(1)  # a correctness failure, unlike a missed speed target


if __name__ == "__main__":
    worker() if "--worker" in sys.argv else main()
