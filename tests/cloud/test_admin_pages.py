"""Every model in the admin opens for an operator: its list (with search and a filter applied)
and its add page render, so a registration with a bad field name fails here, not in front of
someone running the fleet."""

import pytest
from django.contrib import admin
from django.urls import reverse

from tests.factories import UserFactory

MODELS = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)


@pytest.fixture
def operator(client, db):
    user = UserFactory(username="ops@example.com", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


@pytest.mark.parametrize("model,model_admin", MODELS, ids=[m._meta.label for m, _ in MODELS])
def test_changelist_and_search_render(operator, model, model_admin):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert operator.get(url).status_code == 200
    if model_admin.search_fields:
        assert operator.get(url, {"q": "anything"}).status_code == 200


@pytest.mark.parametrize("model,model_admin", MODELS, ids=[m._meta.label for m, _ in MODELS])
def test_add_page_renders_or_is_refused_cleanly(operator, model, model_admin):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")
    assert operator.get(url).status_code in (200, 403)
