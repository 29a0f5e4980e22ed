"""`GET /api/v1/events` (cloud/deployments/sse.py) through Django's ASGI request path: SSE
framing with the headers at once, resuming by Last-Event-ID or ?after=, filters, live delivery
on the channel layer with keep-alives, and the REST API's refusals. A reconnecting follower
over a real daphne is in tests/e2e/test_logs_and_events.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from cloud.deployments import sse
from cloud.deployments.services import event_record
from tests.deployments.factories import DeploymentFactory
from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

URL = "/api/v1/events"


def _setup(scopes="deployments:read"):
    tenant = TenantFactory(slug="acme")
    user = UserFactory(username="alice@example.com")
    MembershipFactory(user=user, tenant=tenant, role="owner")
    token = issue_token(user=user, scopes=scopes)
    return tenant, {"Authorization": f"Bearer {token.token}", "X-Tenant": "acme"}


def parse(text: str) -> list[dict]:
    """SSE messages with data, as {id, data}; comments and retry lines left out."""
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            out.append({"id": int(fields["id"]), "data": json.loads(fields["data"])})
    return out


async def read_all(response) -> str:
    return b"".join([chunk async for chunk in response.streaming_content]).decode()


async def next_chunk(iterator, timeout=10.0) -> str:
    return (await asyncio.wait_for(iterator.__anext__(), timeout)).decode()


async def test_it_streams_the_tenants_events_with_sse_framing():
    tenant, headers = await sync_to_async(_setup)()
    deployment = await sync_to_async(DeploymentFactory)(tenant=tenant, name="web")
    for kind in ("deployment.created", "replica.placed", "replica.running"):
        await sync_to_async(event_record)(tenant=tenant, deployment=deployment, type=kind,
                                          payload={"state": kind.split(".")[1]})
    response = await AsyncClient().get(URL, {"follow": "false"}, headers=headers)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream" and response["Cache-Control"] == "no-cache"
    text = await read_all(response)
    assert text.startswith("retry: ")
    events = parse(text)
    assert [e["data"]["type"] for e in events] == ["deployment.created", "replica.placed", "replica.running"]
    first = events[0]["data"]
    assert first["id"] == events[0]["id"]
    assert (first["deployment_id"], first["name"], first["status"]) == (str(deployment.pk), "web", "created")
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


async def test_last_event_id_and_after_resume_after_that_event():
    tenant, headers = await sync_to_async(_setup)()
    for n in range(5):
        await sync_to_async(event_record)(tenant=tenant, type=f"test.e{n}")
    everything = parse(await read_all(await AsyncClient().get(URL, {"follow": "false"}, headers=headers)))
    cut = everything[1]["id"]
    after = parse(await read_all(await AsyncClient().get(URL, {"follow": "false", "after": cut}, headers=headers)))
    assert [e["id"] for e in after] == [e["id"] for e in everything[2:]]
    resumed = parse(await read_all(await AsyncClient().get(
        URL, {"follow": "false", "after": 0}, headers={**headers, "Last-Event-ID": str(everything[3]["id"])})))
    assert [e["data"]["type"] for e in resumed] == ["test.e4"]  # Last-Event-ID wins over the URL's after


async def test_it_filters_by_deployment_and_type():
    tenant, headers = await sync_to_async(_setup)()
    web, db = [await sync_to_async(DeploymentFactory)(tenant=tenant) for _ in range(2)]
    await sync_to_async(event_record)(tenant=tenant, deployment=web, type="replica.running")
    await sync_to_async(event_record)(tenant=tenant, deployment=web, type="deployment.scaled")
    await sync_to_async(event_record)(tenant=tenant, deployment=db, type="replica.running")
    client = AsyncClient()
    only_web = parse(await read_all(await client.get(URL, {"follow": "false", "deployment": str(web.pk)}, headers=headers)))
    assert {e["data"]["deployment_id"] for e in only_web} == {str(web.pk)} and len(only_web) == 2
    replicas = parse(await read_all(await client.get(URL, {"follow": "false", "type": "replica.*"}, headers=headers)))
    assert [e["data"]["type"] for e in replicas] == ["replica.running", "replica.running"]
    exact = parse(await read_all(await client.get(URL, {"follow": "false", "type": "deployment.scaled,x.y"}, headers=headers)))
    assert [e["data"]["type"] for e in exact] == ["deployment.scaled"]


async def test_live_events_arrive_as_they_commit_and_silence_gets_keep_alives(monkeypatch):
    monkeypatch.setattr(sse, "KEEPALIVE_S", 0.3)
    tenant, headers = await sync_to_async(_setup)()
    response = await AsyncClient().get(URL, headers=headers)
    stream = response.streaming_content
    try:
        assert (await next_chunk(stream)).startswith("retry: ")  # the headers went out with it
        await sync_to_async(event_record)(tenant=tenant, type="test.live")
        (event,) = parse(await next_chunk(stream))
        assert event["data"]["type"] == "test.live"
        assert await next_chunk(stream) == ": keep-alive\n\n"
        await sync_to_async(event_record)(tenant=tenant, type="test.after-silence")
        assert [e["data"]["type"] for e in parse(await next_chunk(stream))] == ["test.after-silence"]
    finally:
        await stream.aclose()


async def test_another_tenants_events_are_never_streamed_and_their_deployment_is_a_404():
    tenant, headers = await sync_to_async(_setup)()
    evil = await sync_to_async(TenantFactory)(slug="evil")
    theirs = await sync_to_async(DeploymentFactory)(tenant=evil)
    await sync_to_async(event_record)(tenant=evil, deployment=theirs, type="test.secret")
    await sync_to_async(event_record)(tenant=tenant, type="test.mine")
    mine = parse(await read_all(await AsyncClient().get(URL, {"follow": "false"}, headers=headers)))
    assert [e["data"]["type"] for e in mine] == ["test.mine"]
    client = AsyncClient()
    refused = await client.get(URL, {"deployment": str(theirs.pk)}, headers=headers)
    missing = await client.get(URL, {"deployment": "11111111-2222-3333-4444-555555555555"}, headers=headers)
    assert refused.status_code == missing.status_code == 404
    assert refused.content.decode().replace(str(theirs.pk), "<id>") == missing.content.decode().replace(
        "11111111-2222-3333-4444-555555555555", "<id>")


async def test_no_token_is_401_a_token_without_the_scope_403_and_bad_parameters_400():
    tenant, headers = await sync_to_async(_setup)(scopes="templates:read")
    client = AsyncClient()
    anonymous = await client.get(URL)
    assert anonymous.status_code == 401 and anonymous["Content-Type"] == "application/problem+json"
    assert anonymous["WWW-Authenticate"] == "Bearer"
    assert (await client.get(URL, headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await client.get(URL, headers=headers)).status_code == 403
    _, good = await sync_to_async(lambda: (None, {**headers, "Authorization": "Bearer " + issue_token(
        user=UserFactory(username="alice@example.com"), scopes="deployments:read").token}))()
    for params, field in (({"after": "x"}, "after"), ({"type": "DROP TABLE"}, "type"), ({"deployment": "nope"}, "deployment")):
        bad = await client.get(URL, params, headers=good)
        assert bad.status_code == 400 and {e["field"] for e in json.loads(bad.content)["errors"]} == {field}
    assert (await client.get(URL, headers={**good, "Last-Event-ID": "abc"})).status_code == 400
    assert (await client.get(URL, headers={**good, "X-Tenant": "evil"})).status_code == 403
