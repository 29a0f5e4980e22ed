"""Appending to tenants' ledgers. The only writer of `LedgerEntry`.

Each tenant's entries are numbered (`seq`) and carry the running balance (`balance_after`).
Both are computed under the tenant's row lock (the same lock quota and funds checks hold), so
the balance a check reads is never one a concurrent charge is about to change, and the unique
(tenant, seq) makes a second writer that skipped the lock fail instead of forking the ledger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from accounts.selectors import tenants_lock
from billing.models import FundsNotice, LedgerEntry, UsageRecord
from billing.money import quantize_money
from billing.selectors import ledger_heads
from cloud.exceptions import Conflict, InvalidInput

log = logging.getLogger(__name__)
K = LedgerEntry.Kind


@dataclass
class Posting:
    tenant_id: int
    kind: str
    amount: Decimal
    actor_name: str
    reason: str
    actor_id: int | None = None
    usage_record: UsageRecord | None = None
    idempotency_key: str | None = None


def ledger_append(postings: list[Posting], *, at: datetime | None = None) -> list[LedgerEntry]:
    """Appends `postings` (any tenants; each tenant's in the order given). Locks the tenants'
    rows in id order (so two appenders never deadlock), then writes every entry in one INSERT.
    Call inside a transaction."""
    if not postings:
        return []
    at = at or timezone.now()
    tenant_ids = sorted({p.tenant_id for p in postings})
    tenants_lock(tenant_ids=tenant_ids)
    heads = ledger_heads(tenant_ids)
    rows = []
    for p in postings:
        seq, balance = heads.get(p.tenant_id, (0, Decimal("0")))
        amount = quantize_money(p.amount)
        seq, balance = seq + 1, balance + amount
        heads[p.tenant_id] = (seq, balance)
        rows.append(LedgerEntry(
            tenant_id=p.tenant_id, seq=seq, kind=p.kind, amount=amount, balance_after=balance,
            usage_record=p.usage_record, idempotency_key=p.idempotency_key, actor_id=p.actor_id,
            actor_name=p.actor_name[:150], reason=p.reason[:500], created_at=at,
        ))
    return LedgerEntry.objects.bulk_create(rows)


def charges_append_for_staged(cursor, *, table: str, at: datetime) -> None:
    """Metering's writer: inserts the usage records staged in temporary `table` (in `ord`
    order) and appends a charge per record to its tenant's ledger, numbered and with running
    balances, in one statement after locking the tenants in id order (like `ledger_append`,
    set-based: a pass charges thousands of records at once)."""
    ledger, records = LedgerEntry._meta.db_table, UsageRecord._meta.db_table
    cursor.execute(f"SELECT DISTINCT tenant_id FROM {table}")
    tenants_lock(tenant_ids=[tenant_id for (tenant_id,) in cursor.fetchall()])
    cursor.execute(f"""
        WITH made AS (
            INSERT INTO {records} (tenant_id, deployment_id, replica_id, volume_id, hardware_type_id, location_id,
                                   period_start, period_end, seconds, gpus, units, price_per_unit_hour,
                                   price_per_gib_month, amount)
            SELECT tenant_id, deployment_id, replica_id, volume_id, hardware_type_id, location_id, period_start,
                   period_end, seconds, gpus, units, price, price_month, amount
            FROM {table} ORDER BY ord
            RETURNING id, tenant_id, amount, seconds, units, price_per_unit_hour, price_per_gib_month, volume_id,
                      period_start, period_end
        ), heads AS (
            SELECT t.tenant_id, coalesce(l.seq, 0) AS seq, coalesce(l.balance_after, 0) AS balance
            FROM (SELECT DISTINCT tenant_id FROM made) t
            LEFT JOIN LATERAL (SELECT seq, balance_after FROM {ledger} WHERE tenant_id = t.tenant_id
                               ORDER BY seq DESC LIMIT 1) l ON true
        )
        INSERT INTO {ledger} (tenant_id, seq, kind, amount, balance_after, usage_record_id, actor_name, reason, created_at)
        SELECT made.tenant_id,
               heads.seq + row_number() OVER w,
               'charge', -made.amount,
               heads.balance - sum(made.amount) OVER w,
               made.id, 'system:metering',
               CASE WHEN made.volume_id IS NULL
                    THEN format('%%s s x %%s unit(s) at %%s/h', made.seconds, made.units, made.price_per_unit_hour)
                    ELSE format('volume %%s: %%s s x %%s GiB at %%s/GiB-month', made.volume_id, made.seconds,
                                made.units, made.price_per_gib_month)
               END
               || format(' (%%s-%%s)', to_char(made.period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"'),
                         to_char(made.period_end AT TIME ZONE 'UTC', 'HH24:MI:SS"Z"')),
               %s
        FROM made JOIN heads USING (tenant_id)
        WINDOW w AS (PARTITION BY made.tenant_id ORDER BY made.id)
    """, [at])


def actor_name_of(actor) -> str:
    if actor is not None and getattr(actor, "is_authenticated", False):
        return actor.get_username()
    return "system"


@transaction.atomic
def ledger_credit(*, tenant, amount: Decimal, reason: str, kind: str = K.CREDIT, actor=None,
                  actor_name: str | None = None, key: str | None = None) -> tuple[LedgerEntry, bool]:
    """A credit, refund or (kind `charge`) a staff correction, with who and why. With `key`, a
    repeat with the same key is the first entry back (created False); the same key with another
    amount or kind is a Conflict. Returns (entry, created)."""
    amount = quantize_money(Decimal(amount))
    if not reason or not reason.strip():
        raise InvalidInput("reason", "Say why: every credit, refund or correction carries a reason.", code="required")
    if kind in (K.CREDIT, K.REFUND) and amount <= 0:
        raise InvalidInput("amount", f"A {kind} is a positive amount.", code="min_value")
    if kind == K.CHARGE:
        if amount == 0:
            raise InvalidInput("amount", "A correction moves the balance: give a non-zero amount.", code="min_value")
        amount = -abs(amount)  # a correction always takes money away; a refund gives it back
    if kind not in K.values:
        raise InvalidInput("kind", f"kind is one of {', '.join(K.values)}.", code="invalid_choice")
    if key is not None:
        # The tenant lock serialises two requests with the same key; the unique index is the net.
        tenants_lock(tenant_ids=[tenant.pk])
        existing = LedgerEntry.objects.filter(tenant=tenant, idempotency_key=key).first()
        if existing is not None:
            if existing.amount != amount or existing.kind != kind:
                raise Conflict(f"Key '{key}' was used for a {existing.kind} of {existing.amount} USD "
                               f"(entry {existing.seq}); a key stands for one entry.")
            return existing, False
    posting = Posting(tenant_id=tenant.pk, kind=kind, amount=amount, reason=reason.strip(),
                      actor_id=actor.pk if getattr(actor, "is_authenticated", False) else None,
                      actor_name=actor_name or actor_name_of(actor), idempotency_key=key)
    (entry,) = ledger_append([posting])
    if FundsNotice.objects.filter(tenant=tenant, closed_at__isnull=True).exists():
        funds_kick()  # a warning or a pending stop may be over now
    return entry, True


def funds_kick() -> None:
    """Ask for the funds passes once this commits: a credit may cancel a pending stop or a
    volume deletion. The tasks are named, not imported: the deployments app's belongs to it
    (imports run one way), and billing's own (`billing.volumes_grace`) imports this module."""

    def send() -> None:
        from cloud.celery import app

        for task in ("deployments.funds_enforce", "billing.volumes_grace"):
            try:
                app.send_task(task, ignore_result=True)
            except Exception:  # noqa: BLE001 - the next metering pass runs it anyway
                log.warning("could not queue %s", task, exc_info=True)

    transaction.on_commit(send)
