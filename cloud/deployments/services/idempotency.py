"""`Idempotency-Key` on POST /deployments: a retried request gets the first answer again.

Stripe's rules: the key is per tenant; the first successful answer (status and body) is kept
for IDEMPOTENCY_KEY_TTL_HOURS; the same key with a different body is a 409, never a replay of
an unrelated deployment. Errors are not kept: a request refused for a quota can be retried
with the same key once the quota allows it.

Two concurrent requests with one key cannot both create: the key row is inserted in the same
transaction as the deployment, and the unique (tenant, key) constraint lets only one commit;
the loser rolls its deployment back and replays the winner's answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from cloud.deployments.models import IdempotencyKey
from cloud.exceptions import Conflict

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class IdempotentResult:
    status_code: int
    body: dict
    replayed: bool


class _LostRace(Exception):
    """Raised inside the transaction to roll back the losing request's deployment."""


def idempotency_fingerprint(data) -> str:
    """Keyed hash of the canonical request body. Keyed (HMAC with SECRET_KEY) because the body
    carries secret env values and registry passwords, which a plain hash would let anyone
    with database access test guesses against."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(settings.SECRET_KEY.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def _replay(*, tenant, key: str, fingerprint: str) -> IdempotentResult | None:
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    row = IdempotencyKey.objects.filter(tenant=tenant, key=key, created_at__gte=cutoff).first()
    if row is None:
        return None
    if not hmac.compare_digest(row.fingerprint, fingerprint):
        raise Conflict(
            "This Idempotency-Key was already used with a different request body; use a new key for a new request.",
            errors=[{"field": "Idempotency-Key", "message": "Reused with a different body.", "code": "idempotency_mismatch"}],
        )
    return IdempotentResult(status_code=row.status_code, body=row.response, replayed=True)


def idempotent_create(*, tenant, key: str, fingerprint: str,
                      produce: Callable[[], tuple[int, dict, object]]) -> IdempotentResult:
    """Replays the answer kept for (tenant, key), or runs `produce` (→ status, body,
    deployment) and keeps its answer, atomically with what it wrote."""
    replay = _replay(tenant=tenant, key=key, fingerprint=fingerprint)
    if replay is not None:
        return replay
    # An expired key of the same name is removed first so the unique constraint admits the new one.
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    IdempotencyKey.objects.filter(tenant=tenant, key=key, created_at__lt=cutoff).delete()
    try:
        with transaction.atomic():
            status_code, body, deployment = produce()
            try:
                with transaction.atomic():
                    IdempotencyKey.objects.create(
                        tenant=tenant, key=key, fingerprint=fingerprint, deployment=deployment,
                        status_code=status_code, response=body,
                    )
            except IntegrityError:
                raise _LostRace() from None
    except _LostRace:
        replay = _replay(tenant=tenant, key=key, fingerprint=fingerprint)
        if replay is None:  # the winner's row vanished (purged) between the two statements
            raise Conflict("A concurrent request with this Idempotency-Key is being processed; retry.") from None
        return replay
    return IdempotentResult(status_code=status_code, body=body, replayed=False)


def idempotency_keys_purge(*, older_than: timedelta | None = None) -> int:
    """Deletes keys past their time to live; returns how many."""
    older_than = older_than or timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted
