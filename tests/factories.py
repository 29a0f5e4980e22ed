"""factory-boy factories shared by every app's tests (app-specific ones live beside their tests)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application

from accounts.models import Membership, Tenant
from billing.services import ledger_credit
from nodes.models import HardwareType, Location


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}@example.com")
    email = factory.SelfAttribute("username")
    password = factory.django.Password("correct horse battery staple")


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant
        django_get_or_create = ("slug",)
        skip_postgeneration_save = True

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda t: t.slug.title())

    @factory.post_generation
    def balance(tenant, create, extracted, **kwargs):
        """`TenantFactory(balance=X)`: the tenant's ledger opens with a credit of X (1000 USD by
        default; 0 for none). A balance is the ledger's sum, never a field (issue 18)."""
        amount = Decimal("1000") if extracted is None else Decimal(extracted)
        if create and amount > 0 and not tenant.ledger_entries.exists():
            ledger_credit(tenant=tenant, amount=amount, reason="test tenant's opening credit", actor_name="tests",
                          key="factory-opening")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    tenant = factory.SubFactory(TenantFactory)
    role = Membership.Role.MEMBER


class LocationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Location
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"region-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())
    country = "US"


class HardwareTypeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = HardwareType
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"hw-{n}")
    name = "8x H100 80GB SXM"
    gpu_model = "NVIDIA H100 80GB HBM3"
    gpu_memory_gib = 80
    gpus_per_node = 8
    allowed_gpu_counts = [1, 2, 4, 8]
    vcpus_per_gpu = 16
    memory_gib_per_gpu = 200
    price_per_gpu_hour = Decimal("2.4900")


def issue_token(*, user=None, application=None, scopes: str = "deployments:read deployments:write templates:read billing:read") -> AccessToken:
    """A bearer token as /o/token/ would issue it, without the HTTP round trip (the OAuth2
    flows themselves are tested end to end in tests/accounts/test_oauth_flows.py)."""
    if application is None:
        application = Application.objects.create(
            name="test client", client_type=Application.CLIENT_PUBLIC,
            authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE, redirect_uris="http://127.0.0.1/cb", user=user,
        )
    return AccessToken.objects.create(
        user=user, application=application, scope=scopes, expires=timezone.now() + timedelta(hours=1),
        token=factory.Faker._get_faker().sha256(),
    )
