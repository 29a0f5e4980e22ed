"""The tenant's page in the admin, as billing extends it: the spend limit is set through
`spend_limit_set` (which asks for a funds pass), and what it refuses is a form error."""

from decimal import Decimal

import pytest
from django.urls import reverse

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    client.force_login(UserFactory(username="ops@example.com", is_staff=True, is_superuser=True))
    return client


def _form(tenant, **changes) -> dict:
    return {"name": tenant.name, "max_gpus": tenant.max_gpus, "max_deployments": tenant.max_deployments,
            "max_volume_gib": tenant.max_volume_gib, "spend_limit": "", **changes}


def test_the_spend_limit_is_set_through_billings_service(operator, acme, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr("cloud.celery.app.send_task", lambda name, **kwargs: sent.append(name))
    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(reverse("admin:accounts_tenant_change", args=[acme.pk]),
                                 _form(acme, spend_limit="50"))
    assert response.status_code == 302, response.content[:2000]
    acme.refresh_from_db()
    # One round of funds passes asked for (the deployments' and the volumes'): the service's, not
    # the form's check (rolled back with its kick).
    assert acme.spend_limit == Decimal("50") and sent == ["deployments.funds_enforce", "billing.volumes_grace"]


def test_a_refused_spend_limit_is_a_form_error(operator, acme):
    response = operator.post(reverse("admin:accounts_tenant_change", args=[acme.pk]), _form(acme, spend_limit="-5"))
    assert response.status_code == 200 and b"errornote" in response.content
    acme.refresh_from_db()
    assert acme.spend_limit is None


def test_the_changelist_shows_balance_and_spend_limit(operator, acme):
    page = operator.get(reverse("admin:accounts_tenant_changelist"))
    assert page.status_code == 200 and b'<td class="field-balance">1000.000000</td>' in page.content

