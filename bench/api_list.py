"""List-endpoint benchmark: GET /api/v1/deployments?page=N&limit=20 through the real ASGI stack.

Seeds 100,000 deployments over 200 tenants (one of them holding 5,000) in a database of its own
(`<DATABASE_URL name>_bench`, created and migrated on first use, reused afterwards), starts
daphne on a free loopback port, and times sequential requests from a client on this machine.
Prints p50/p90/p99 per page size and the SQL query count per request for limit 1, 20 and 100
(it must not grow with the page size). Target (issue 2): p99 < 50 ms at limit=20.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kit import daphne_argv, free_port, plane_secrets  # noqa: E402

base_url = os.environ.get("DATABASE_URL", "postgres://gantry:gantry@127.0.0.1:5432/gantry")
parts = urlsplit(base_url)
BENCH_DB_URL = urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_bench"))
os.environ["DATABASE_URL"] = BENCH_DB_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloud.settings")
os.environ.setdefault("API_RATE_LIMIT", "1000000/min")
plane_secrets()  # the plane refuses the development key (cloud/production.py)

TENANTS = 200
TOTAL = 100_000
BIG_TENANT_ROWS = 5_000
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "400"))


def ensure_database() -> None:
    import psycopg

    admin = urlunsplit(parts._replace(path="/postgres"))
    name = parts.path.strip("/") + "_bench"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def seed() -> str:
    """Returns a bearer token for the big tenant's owner."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone
    from oauth2_provider.models import AccessToken, Application

    from accounts.models import Membership, Tenant
    from cloud.deployments.models import Deployment
    from nodes.models import HardwareType

    call_command("migrate", verbosity=0)
    User = get_user_model()
    user, _ = User.objects.get_or_create(username="bench@example.com", defaults={"email": "bench@example.com"})
    if Deployment.objects.count() < TOTAL:
        t0 = time.perf_counter()
        Deployment.objects.all().delete()
        hw, _ = HardwareType.objects.get_or_create(
            slug="bench-h100", defaults=dict(name="8x H100", gpu_model="H100", gpu_memory_gib=80, gpus_per_node=8,
                                             allowed_gpu_counts=[1, 2, 4, 8], vcpus_per_gpu=16, memory_gib_per_gpu=200,
                                             price_per_gpu_hour=Decimal("2.49")))
        tenants = [Tenant.objects.get_or_create(slug=f"bench-{i:03d}", defaults={"name": f"Bench {i}"})[0] for i in range(TENANTS)]
        Membership.objects.get_or_create(user=user, tenant=tenants[0], defaults={"role": "owner"})
        counts = [BIG_TENANT_ROWS] + [(TOTAL - BIG_TENANT_ROWS) // (TENANTS - 1)] * (TENANTS - 1)
        counts[-1] += TOTAL - sum(counts)
        now = timezone.now()
        statuses = ["pending", "running", "stopped", "failed"]
        batch = []
        for tenant, count in zip(tenants, counts):
            for i in range(count):
                batch.append(Deployment(
                    tenant=tenant, name=f"dep-{i}", image="127.0.0.1:5000/gantry/hello:latest", env={"GREETING": "hi"},
                    gpus_per_container=1, hardware_type=hw, replica_count=1, status=statuses[i % 4],
                    price_per_gpu_hour=hw.price_per_gpu_hour, total_cost=Decimal("1.5"),
                    expires_at=now + timedelta(hours=1)))
                if len(batch) == 5000:
                    Deployment.objects.bulk_create(batch)
                    batch = []
        Deployment.objects.bulk_create(batch)
        print(f"seeded {Deployment.objects.count()} deployments over {TENANTS} tenants in {time.perf_counter() - t0:.1f} s")
    app, _ = Application.objects.get_or_create(
        name="bench", defaults=dict(client_type="public", authorization_grant_type="authorization-code",
                                    redirect_uris="http://127.0.0.1/cb", user=user))
    token = AccessToken.objects.create(user=user, application=app, scope="deployments:read",
                                       expires=timezone.now() + timedelta(hours=2), token=os.urandom(16).hex())
    return token.token


def query_counts(token: str) -> dict[int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_X_TENANT="bench-000")
    out = {}
    for limit in (1, 20, 100):
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(f"/api/v1/deployments?page=3&limit={limit}")
        assert response.status_code == 200, response.content[:300]
        assert len(response.json()["deployments"]) == limit
        out[limit] = len(ctx.captured_queries)
    return out


def main() -> None:
    ensure_database()
    import django

    django.setup()
    token = seed()
    counts = query_counts(token)

    import logging

    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)
    port = free_port()
    server = subprocess.Popen(
        daphne_argv(port),
        cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}", "X-Tenant": "bench-000"}
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            for _ in range(100):
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            pages = BIG_TENANT_ROWS // 20
            for _ in range(30):  # warm up connections and caches
                client.get("/api/v1/deployments?page=1&limit=20")
            results = {}
            for limit in (20, 100):
                samples = []
                for i in range(REQUESTS):
                    page = 1 + (i * 37) % (BIG_TENANT_ROWS // limit)
                    t0 = time.perf_counter()
                    r = client.get(f"/api/v1/deployments?page={page}&limit={limit}")
                    samples.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200, r.text[:300]
                results[limit] = samples
    finally:
        server.terminate()
        server.wait(timeout=10)

    print(f"GET /api/v1/deployments for a tenant with {BIG_TENANT_ROWS} of {TOTAL} deployments, "
          f"{REQUESTS} sequential requests over daphne (pages spread over 1..{pages}):")
    for limit, samples in results.items():
        q = statistics.quantiles(samples, n=100)
        print(f"  limit={limit:<3}  p50 {statistics.median(samples):6.1f} ms   p90 {q[89]:6.1f} ms   "
              f"p99 {q[98]:6.1f} ms   max {max(samples):6.1f} ms")
    print("  SQL queries per request: " + ", ".join(f"limit={k}: {v}" for k, v in counts.items())
          + ("  (constant)" if len(set(counts.values())) == 1 else "  (GROWS WITH PAGE SIZE)"))
    p99 = statistics.quantiles(results[20], n=100)[98]
    print(f"  target: p99 < 50 ms at limit=20 -> {'met' if p99 < 50 else 'MISSED'} ({p99:.1f} ms)")


if __name__ == "__main__":
    main()
