from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.deployments.models import Deployment, IdempotencyKey
from cloud.deployments.services import idempotency_keys_purge
from cloud.deployments.tasks import idempotency_keys_purge as purge_task
from tests.deployments.conftest import URL, post_concurrently

pytestmark = pytest.mark.django_db


def post(client, data, key):
    return client.post(URL, data, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_a_retry_returns_the_first_answer(as_alice, body):
    first = post(as_alice, body(), "key-1")
    second = post(as_alice, body(), "key-1")
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second["Idempotent-Replayed"] == "true"
    assert Deployment.objects.count() == 1


def test_the_replay_is_the_first_answer_even_after_changes(as_alice, body):
    first = post(as_alice, body(), "key-1").json()
    as_alice.post(f"{URL}/{first['deployment']['id']}/stop")
    assert post(as_alice, body(), "key-1").json() == first


def test_the_same_key_with_another_body_is_a_conflict(as_alice, body):
    post(as_alice, body(), "key-1")
    response = post(as_alice, body(replica_count=2), "key-1")
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert Deployment.objects.count() == 1


def test_another_tenants_same_key_is_independent(as_alice, as_mallory, body):
    a = post(as_alice, body(), "shared-key").json()
    m = post(as_mallory, body(), "shared-key").json()
    assert a["deployment"]["id"] != m["deployment"]["id"]
    assert Deployment.objects.count() == 2


def test_different_keys_create_different_deployments(as_alice, body):
    post(as_alice, body(), "key-1")
    post(as_alice, body(), "key-2")
    assert Deployment.objects.count() == 2


def test_errors_are_not_kept_so_a_fixed_retry_succeeds(as_alice, acme, body):
    acme.max_deployments = 0
    acme.save()
    assert post(as_alice, body(), "key-1").status_code == 429
    acme.max_deployments = 5
    acme.save()
    assert post(as_alice, body(), "key-1").status_code == 201


def test_without_a_key_each_post_creates(as_alice, body):
    as_alice.post(URL, body(), format="json")
    as_alice.post(URL, body(), format="json")
    assert Deployment.objects.count() == 2


def test_expired_keys_are_purged_and_can_be_reused(as_alice, body):
    post(as_alice, body(), "old-key")
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert "Idempotent-Replayed" not in post(as_alice, body(), "old-key")
    assert Deployment.objects.count() == 2  # past its TTL the key no longer replays
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert purge_task() == 1
    assert idempotency_keys_purge() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_create_one_deployment(alice, body):
    responses = post_concurrently(alice, body(), times=4, headers={"HTTP_IDEMPOTENCY_KEY": "race-key"})
    assert [r.status_code for r in responses] == [201] * 4
    assert len({r.json()["deployment"]["id"] for r in responses}) == 1
    assert Deployment.objects.count() == 1
