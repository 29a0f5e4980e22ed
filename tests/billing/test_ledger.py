"""The ledger: a balance is the sum of credits, charges and refunds, each with who and why;
`manage.py credit`; the trial credit of a new tenant."""

import json
import threading
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.services import email_mark_confirmed, tenant_create
from billing.models import LedgerEntry
from billing.selectors import tenant_balance
from billing.services import ledger_credit
from cloud.exceptions import Conflict, InvalidInput
from tests.factories import TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


def confirmed(user):
    # The trial credit comes only with a confirmed email (tests/accounts/test_email_confirmation.py).
    email_mark_confirmed(user=user, how="link")
    return user


def credit(*args) -> dict:
    out = StringIO()
    call_command("credit", *args, stdout=out)
    return json.loads(out.getvalue())


def test_a_new_tenants_trial_credit_is_its_first_ledger_entry(settings):
    settings.TENANT_DEFAULT_BALANCE = "10"
    tenant = tenant_create(slug="newco", owner=confirmed(UserFactory()))
    entry = LedgerEntry.objects.get(tenant=tenant)
    assert (entry.seq, entry.kind, entry.amount, entry.actor_name) == (1, "credit", Decimal("10"), "system:trial")
    assert tenant_balance(tenant=tenant) == Decimal("10.000000")


def test_no_trial_credit_when_the_default_is_zero(settings):
    settings.TENANT_DEFAULT_BALANCE = "0"
    tenant = tenant_create(slug="payfirst", owner=confirmed(UserFactory()))
    assert not LedgerEntry.objects.filter(tenant=tenant).exists()
    assert tenant_balance(tenant=tenant) == 0


def test_the_balance_is_the_sum_of_credits_charges_and_refunds(acme, alice):
    ledger_credit(tenant=acme, amount=Decimal("25.5"), reason="top-up", actor=alice)
    ledger_credit(tenant=acme, amount=Decimal("4.25"), kind="refund", reason="failed boot on gpu-7", actor=alice)
    ledger_credit(tenant=acme, amount=Decimal("0.75"), kind="charge", reason="correction of a typo", actor=alice)
    entries = list(LedgerEntry.objects.filter(tenant=acme).order_by("seq").values_list("kind", "amount", "actor_name"))
    assert entries[1:] == [("credit", Decimal("25.5"), "alice@example.com"),
                           ("refund", Decimal("4.25"), "alice@example.com"),
                           ("charge", Decimal("-0.75"), "alice@example.com")]
    assert tenant_balance(tenant=acme) == Decimal("1000") + Decimal("25.5") + Decimal("4.25") - Decimal("0.75")


def test_a_credit_needs_a_reason_and_a_positive_amount(acme):
    with pytest.raises(InvalidInput):
        ledger_credit(tenant=acme, amount=Decimal("5"), reason=" ")
    with pytest.raises(InvalidInput):
        ledger_credit(tenant=acme, amount=Decimal("-5"), reason="negative")


def test_the_same_key_never_credits_twice(acme):
    first, created = ledger_credit(tenant=acme, amount=Decimal("50"), reason="invoice 17", key="inv-17")
    again, created_again = ledger_credit(tenant=acme, amount=Decimal("50"), reason="invoice 17", key="inv-17")
    assert (created, created_again, again.pk) == (True, False, first.pk)
    with pytest.raises(Conflict):
        ledger_credit(tenant=acme, amount=Decimal("51"), reason="invoice 17", key="inv-17")
    assert LedgerEntry.objects.filter(tenant=acme, idempotency_key="inv-17").count() == 1


def test_credit_command_adds_with_who_and_why_and_is_idempotent_with_a_key(acme):
    out = credit("acme", "12.5", "--reason", "goodwill for ticket 42", "--key", "t42", "--by", "ops@example.com")
    assert out == {"tenant": "acme", "seq": 2, "kind": "credit", "amount": "12.500000", "balance": "1012.500000",
                   "created": True}
    assert credit("acme", "12.5", "--reason", "goodwill for ticket 42", "--key", "t42")["created"] is False
    entry = LedgerEntry.objects.get(tenant=acme, idempotency_key="t42")
    assert (entry.actor_name, entry.reason) == ("ops@example.com", "goodwill for ticket 42")
    assert credit("acme", "3", "--reason", "refund of a failed boot", "--refund")["kind"] == "refund"


@pytest.mark.parametrize("args,message", [
    (["nope", "1", "--reason", "x"], "No tenant"),
    (["acme", "ten", "--reason", "x"], "decimal"),
    (["acme", "-1", "--reason", "x"], "positive"),
])
def test_credit_command_refuses_what_it_cannot_do(acme, args, message):
    with pytest.raises(CommandError, match=message):
        credit(*args)


@pytest.mark.django_db(transaction=True)
def test_concurrent_credits_never_fork_the_ledger():
    tenant = TenantFactory(slug="busy", balance=0)
    barrier = threading.Barrier(6)
    errors = []

    def one(i):
        barrier.wait()
        try:
            ledger_credit(tenant=tenant, amount=Decimal("1.000001"), reason=f"credit {i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(LedgerEntry.objects.filter(tenant=tenant).values_list("seq", flat=True)) == [1, 2, 3, 4, 5, 6]
    assert tenant_balance(tenant=tenant) == Decimal("6.000006")
