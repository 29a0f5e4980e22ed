"""Tenant isolation for every API route and verb, found by walking the URL conf.

A route under /api/v1/ that is not listed in ROUTES below fails
`test_every_api_route_has_an_isolation_case`, so a new endpoint cannot ship without saying how
another tenant's data is kept from it. For each route and each method its view accepts:
- anonymous → 401;
- an object route asked by alice about mallory's object → 404 (and mallory herself gets no
  404 for the same request, so the object is real and the check can fail);
- a list route never shows alice mallory's objects, while mallory sees them.
"""

from __future__ import annotations

import warnings
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal
from typing import Callable

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from tests.conftest import client_for
from tests.deployments.factories import DeploymentFactory, LogLineFactory, ReplicaFactory
from tests.factories import LocationFactory
from tests.templates.factories import TemplateFactory

DOCS = {"api/v1/schema/", "api/v1/docs/", "api/v1/redoc/"}


@dataclass(frozen=True)
class ObjectRoute:
    """The route names one customer-owned object; `make(tenant)` returns its URL kwargs."""

    make: Callable[..., dict]


@dataclass(frozen=True)
class ListRoute:
    """The route lists the caller's objects; `make(tenant)` returns text that would leak."""

    make: Callable[..., str]


@dataclass(frozen=True)
class TenantRoute:
    """The route reads or changes the caller's own tenant (balance, usage, statements, limits,
    estimates): `make(tenant)` returns text only that tenant's answer may contain."""

    make: Callable[..., str]
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CatalogRoute:
    """Shared, non-tenant data (hardware, locations): only authentication is checked here."""


@dataclass(frozen=True)
class StaffRoute:
    """Operators only (scope nodes:admin and a staff account): a customer gets a 403."""

    make: Callable[..., dict]


@dataclass(frozen=True)
class StreamRoute:
    """An event stream of the caller's tenant (SSE): read with ?follow=false so it ends;
    `make(tenant)` returns (text that would leak, a deployment id of that tenant to filter by)."""

    make: Callable[..., tuple[str, str]]


@dataclass(frozen=True)
class JoinRoute:
    """The agent's join: no bearer token by design; a join token it cannot show is a 401."""


JOIN_BODY = {"token": "gjoin_not-a-token", "inventory": {
    "hostname": "h", "agent_version": "t", "cpus": 1, "memory_mib": 1, "disk_gib": 1, "accelerator": "tcg"}}


def _node(tenant) -> dict:
    from tests.deployments.factories import NodeFactory

    return {"node_id": NodeFactory().pk}


def _deployment(tenant) -> dict:
    deployment = DeploymentFactory(tenant=tenant, name="mallory-secret-dep")
    replica = ReplicaFactory(deployment=deployment, ordinal=0)
    LogLineFactory(replica=replica, message="mallory-secret-log")
    return {"pk": deployment.pk}


def _endpoint_key(tenant) -> dict:
    from cloud.deployments.services import endpoint_key_create

    deployment = DeploymentFactory(tenant=tenant, name="mallory-secret-dep", traffic_port=8080)
    made = endpoint_key_create(tenant=tenant, actor=None, deployment_id=deployment.pk, name="mallory-secret-key")
    return {"pk": deployment.pk, "key_id": made.key.pk}


def _event(tenant) -> tuple[str, str]:
    from cloud.deployments.services import event_record

    deployment = DeploymentFactory(tenant=tenant, name="mallory-secret-dep")
    event_record(tenant=tenant, deployment=deployment, type="test.secret", payload={"note": "mallory-secret-event"})
    return "mallory-secret-event", str(deployment.pk)


def _streamed(response) -> str:
    # The stream is async (daphne serves it so); the sync test client may read it all the same.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return b"".join(response).decode()


def _balance(tenant) -> str:
    from tests.billing.factories import set_balance

    set_balance(tenant, Decimal("4321.123457"))
    return "4321.123457"


def _estimate(tenant) -> str:
    from tests.factories import HardwareTypeFactory

    HardwareTypeFactory()  # something to quote
    return _balance(tenant)


def _usage(tenant) -> str:
    from billing.models import UsageDaily

    deployment = DeploymentFactory(tenant=tenant, name="mallory-secret-dep")
    UsageDaily.objects.create(tenant=tenant, deployment=deployment, hardware_type=deployment.hardware_type,
                              day=datetime.now(dt_timezone.utc).date(), amount=Decimal("1.5"), seconds=60, records=1)
    return str(deployment.pk)


def _statement_record(tenant) -> str:
    from billing.models import UsageRecord

    deployment = DeploymentFactory(tenant=tenant, name="mallory-secret-dep")
    replica = ReplicaFactory(deployment=deployment, ordinal=0)
    start = datetime(2026, 2, 3, 4, 5, 6, tzinfo=dt_timezone.utc)
    UsageRecord.objects.create(tenant=tenant, deployment=deployment, replica=replica,
                               hardware_type=deployment.hardware_type, period_start=start,
                               period_end=start + timedelta(minutes=1), seconds=60, gpus=1, units=1,
                               price_per_unit_hour=Decimal("2.49"), amount=Decimal("0.0415"))
    return str(deployment.pk)


def _spend_limit(tenant) -> str:
    tenant.spend_limit = Decimal("777.000001")
    tenant.save()
    return "777.000001"


def _volume_of(tenant) -> str:
    from volumes import services as volume_services

    return str(volume_services.volume_create(tenant=tenant, actor=None, name="mallory-secret-vol", size_gib=1,
                                             location_id=LocationFactory().id).pk)


def _private_template(tenant) -> dict:
    return {"ref": TemplateFactory(tenant=tenant, slug="mallory-secret-tpl").slug}


ROUTES: dict[str, ObjectRoute | ListRoute | CatalogRoute | StaffRoute | StreamRoute | JoinRoute] = {
    "api/v1/^deployments$": ListRoute(lambda t: str(DeploymentFactory(tenant=t, name="mallory-secret-dep").pk)),
    "api/v1/^deployments/(?P<pk>[^/]+)$": ObjectRoute(_deployment),
    "api/v1/^deployments/(?P<pk>[^/]+)/endpoint-keys$": ObjectRoute(_endpoint_key),
    "api/v1/^deployments/(?P<pk>[^/]+)/endpoint-keys/(?P<key_id>[^/]+)$": ObjectRoute(_endpoint_key),
    "api/v1/^deployments/(?P<pk>[^/]+)/events$": ObjectRoute(_deployment),
    "api/v1/^deployments/(?P<pk>[^/]+)/logs$": ObjectRoute(_deployment),
    "api/v1/^deployments/(?P<pk>[^/]+)/logs/ticket$": ObjectRoute(_deployment),
    "api/v1/^deployments/(?P<pk>[^/]+)/metrics/requests$": ObjectRoute(_deployment),
    "api/v1/^deployments/(?P<pk>[^/]+)/replicas$": ObjectRoute(_deployment),
    "api/v1/^deployments/(?P<pk>[^/]+)/restart$": ObjectRoute(_deployment),
    "api/v1/^deployments/(?P<pk>[^/]+)/start$": ObjectRoute(_deployment),
    "api/v1/^deployments/(?P<pk>[^/]+)/stop$": ObjectRoute(_deployment),
    "api/v1/events": StreamRoute(_event),
    "api/v1/^volumes$": ListRoute(_volume_of),
    "api/v1/^volumes/(?P<pk>[^/]+)$": ObjectRoute(lambda t: {"pk": _volume_of(t)}),
    "api/v1/^templates$": ListRoute(lambda t: TemplateFactory(tenant=t, slug="mallory-secret-tpl").slug),
    "api/v1/^templates/(?P<ref>[^/]+)$": ObjectRoute(_private_template),
    "api/v1/^deployments/estimate$": TenantRoute(_estimate),
    "api/v1/billing/balance": TenantRoute(_balance),
    "api/v1/billing/usage": TenantRoute(_usage),
    "api/v1/billing/limits": TenantRoute(_spend_limit),
    r"api/v1/^billing/statements/(?P<month>[0-9]{4}-[0-9]{2})\.csv$": TenantRoute(_statement_record, {"month": "2026-02"}),
    "api/v1/hardware": CatalogRoute(),
    "api/v1/locations": CatalogRoute(),
    "api/v1/nodes/join": JoinRoute(),
    "api/v1/nodes/<int:node_id>/cordon": StaffRoute(_node),
    "api/v1/nodes/<int:node_id>/drain": StaffRoute(_node),
    "api/v1/nodes/<int:node_id>/uncordon": StaffRoute(_node),
    "api/v1/nodes/<int:node_id>/vfio": StaffRoute(_node),
    "api/v1/nodes/<int:node_id>/vfio/validate": StaffRoute(_node),
    "api/v1/system/status": StaffRoute(lambda t: {}),
}


def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def _methods(pattern: URLPattern) -> list[str]:
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions:
        return sorted(actions)
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return sorted(m for m in ("get", "post", "put", "patch", "delete") if hasattr(view_class, m))


def _api_routes():
    return {route: p for route, p in _walk(get_resolver().url_patterns) if route.startswith("api/") and route not in DOCS}


def _url(route: str, kwargs: dict) -> str:
    path = route
    for key, value in kwargs.items():
        path = re.sub(rf"\(\?P<{key}>[^)]*\)", str(value), path).replace(f"<int:{key}>", str(value))
    return "/" + path.replace("^", "").replace("$", "").replace("\\.", ".")


def _cases():
    for route, pattern in sorted(_api_routes().items()):
        for method in _methods(pattern):
            yield pytest.param(route, method, id=f"{method.upper()} /{route}")


def test_every_api_route_has_an_isolation_case():
    missing = sorted(set(_api_routes()) - set(ROUTES))
    assert not missing, f"routes without a tenant-isolation case in tests/test_tenant_isolation.py: {missing}"
    stale = sorted(set(ROUTES) - set(_api_routes()))
    assert not stale, f"isolation cases for routes that no longer exist: {stale}"


@pytest.mark.django_db
@pytest.mark.parametrize("route,method", list(_cases()))
def test_anonymous_gets_401(route, method, anonymous):
    case = ROUTES[route]
    kwargs = {key: "00000000-0000-0000-0000-000000000000" for key in ("pk", "ref", "key_id")}
    if isinstance(case, ObjectRoute):
        url = _url(route, kwargs)
    elif isinstance(case, TenantRoute):
        url = _url(route, case.kwargs)
    else:
        url = _url(route, {"node_id": 1})
    body = JOIN_BODY if isinstance(case, JoinRoute) else {}
    response = getattr(anonymous, method)(url, body, format="json")
    assert response.status_code == 401, response.content
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.django_db
@pytest.mark.parametrize("route,method", list(_cases()))
def test_another_tenants_data_is_invisible(route, method, alice, mallory, evil):
    case = ROUTES[route]
    as_alice, as_mallory = client_for(alice, tenant="acme"), client_for(mallory, tenant="evil")
    if isinstance(case, ObjectRoute):
        kwargs = case.make(evil)
        url = _url(route, kwargs)
        theirs = getattr(as_alice, method)(url, {}, format="json")
        assert theirs.status_code == 404, f"{method.upper()} {url} as alice: {theirs.status_code} {theirs.content[:200]}"
        # Indistinguishable from an object that never existed: same body but for the id echoed.
        nothing = {key: ("11111111-2222-3333-4444-555555555555" if key == "pk" else "no-such-object") for key in kwargs}
        absent = getattr(as_alice, method)(_url(route, nothing), {}, format="json")
        def _normalised(response, ids):
            text = response.content.decode()
            for value in ids.values():
                text = text.replace(str(value), "<id>")
            return text
        assert _normalised(theirs, kwargs) == _normalised(absent, nothing)
        assert "mallory-secret-log" not in theirs.content.decode()
        own = getattr(as_mallory, method)(url, {}, format="json")
        assert own.status_code != 404, f"{method.upper()} {url} as mallory should find her own object"
    elif isinstance(case, ListRoute):
        if method != "get":
            pytest.skip("creation lands in the caller's tenant: covered by each create test")
        marker = case.make(evil)
        url = _url(route, {})
        assert marker not in as_alice.get(url).content.decode()
        assert marker in as_mallory.get(url).content.decode()
    elif isinstance(case, StreamRoute):
        marker, deployment_id = case.make(evil)
        url = _url(route, {})
        assert marker not in _streamed(as_alice.get(url, {"follow": "false"}))
        assert marker in _streamed(as_mallory.get(url, {"follow": "false"}))
        theirs = as_alice.get(url, {"deployment": deployment_id})
        absent = as_alice.get(url, {"deployment": "11111111-2222-3333-4444-555555555555"})
        assert theirs.status_code == absent.status_code == 404
        assert theirs.content.decode().replace(deployment_id, "<id>") == absent.content.decode().replace(
            "11111111-2222-3333-4444-555555555555", "<id>")
    elif isinstance(case, TenantRoute):
        marker = case.make(evil)
        url = _url(route, case.kwargs)
        def text(response) -> str:
            return _streamed(response) if response.streaming else response.content.decode()

        theirs = getattr(as_alice, method)(url, {}, format="json")
        assert marker not in text(theirs), f"{method.upper()} {url} as alice shows mallory's tenant"
        own = getattr(as_mallory, method)(url, {}, format="json")
        assert marker in text(own), f"{method.upper()} {url} as mallory should show her own tenant"
    elif isinstance(case, StaffRoute):
        response = getattr(as_alice, method)(_url(route, case.make(evil)), {}, format="json")
        assert response.status_code == 403, response.content
    elif isinstance(case, JoinRoute):
        response = as_alice.post(_url(route, {}), JOIN_BODY, format="json")
        assert response.status_code == 401  # a customer's bearer token is no join token
    else:
        response = getattr(as_alice, method)(_url(route, {}))
        assert response.status_code == 200
