"""An open log socket or event stream lasts only as long as the access it was opened with
(streams.access_lost, checked every STREAM_ACCESS_RECHECK_S): removing a member from the tenant
on the dashboard, or revoking a token through /o/revoke_token/, ends that member's open sockets
and streams within seconds, with the reason, while everyone else's stay open."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient, Client
from rest_framework.test import APIClient

from accounts.models import Membership
from cloud import streams
from cloud.asgi import application
from cloud.deployments import consumers
from tests.dashboard.conftest import browser_for
from tests.deployments.factories import DeploymentFactory, ReplicaFactory
from tests.deployments.test_log_tail import open_tail, store
from tests.factories import MembershipFactory, TenantFactory, UserFactory, issue_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

RECHECK_S = 0.3
WITHIN_S = 5.0  # "within seconds"


@pytest.fixture
def fast_recheck(settings):
    settings.STREAM_ACCESS_RECHECK_S = RECHECK_S


@pytest.fixture
def rechecks(monkeypatch) -> list:
    """Every recheck of an open socket's or stream's access, in order: (its Access, what was
    lost). Each socket and stream holds an Access of its own, so `id()` tells them apart."""
    seen = []
    real = streams.access_lost

    def recorded(access):
        lost = real(access)
        seen.append((access, lost))
        return lost

    monkeypatch.setattr(streams, "access_lost", recorded)
    return seen


def _cast():
    acme = TenantFactory(slug="acme")
    alice, bob = UserFactory(username="alice@example.com"), UserFactory(username="bob@example.com")
    MembershipFactory(user=alice, tenant=acme, role="owner")
    bob_membership = MembershipFactory(user=bob, tenant=acme, role="member")
    deployment = DeploymentFactory(tenant=acme, name="web")
    replica = ReplicaFactory(deployment=deployment, ordinal=0)
    store(replica, [1])
    bob_token, alice_token = issue_token(user=bob), issue_token(user=alice)
    return {"acme": acme, "alice": alice, "bob": bob, "bob_membership": bob_membership, "deployment": deployment,
            "replica": replica, "bob_token": bob_token, "alice_token": alice_token}


@pytest.fixture
async def cast(fast_recheck, rechecks):
    cast = await sync_to_async(_cast)()
    cast["rechecks"] = rechecks
    return cast


async def log_socket(cast, token):
    tail, connected = await open_tail(cast["deployment"].pk, token=token.token, headers=[(b"x-tenant", b"acme")])
    assert connected and [json.loads(line)["seq"] for line in (await tail.receive_from(timeout=5)).split("\n")] == [1]
    return tail


async def event_stream(token):
    response = await AsyncClient().get("/api/v1/events", headers={"Authorization": f"Bearer {token.token}",
                                                                   "X-Tenant": "acme"})
    assert response.status_code == 200
    stream = response.streaming_content
    assert (await asyncio.wait_for(stream.__anext__(), 5)).decode().startswith("retry: ")
    return stream


async def socket_ended(tail) -> tuple[dict, int]:
    """The error frame and close code a socket ends with, within WITHIN_S."""
    error = json.loads(await tail.receive_from(timeout=WITHIN_S))
    closed = await tail.receive_output(timeout=WITHIN_S)
    assert closed["type"] == "websocket.close"
    return error, closed["code"]


async def stream_ended(stream) -> dict:
    """The `closed` event a stream ends with, within WITHIN_S; nothing follows it."""
    text = ""
    while "event: closed" not in text:
        text += (await asyncio.wait_for(stream.__anext__(), WITHIN_S)).decode()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(stream.__anext__(), WITHIN_S)
    data = [line for line in text.split("event: closed\n", 1)[1].splitlines() if line.startswith("data: ")][0]
    return json.loads(data[6:])


async def still_open(cast, token, tail, stream) -> None:
    """The socket and the stream `token` opened were each rechecked since, kept their access,
    and are open: a line stored now is the socket's next frame, and the stream says nothing."""
    since = len(cast["rechecks"])
    chunk = asyncio.ensure_future(stream.__anext__())  # the stream rechecks only while it is read

    def kept() -> set[int]:
        return {id(access) for access, lost in cast["rechecks"][since:] if access.token_id == token.pk and lost is None}

    for _ in range(int(WITHIN_S / 0.02)):
        if len(kept()) >= 2:
            break
        await asyncio.sleep(0.02)
    assert len(kept()) == 2, "the socket and the stream were not both rechecked"
    assert not chunk.done()  # nothing to say: no `closed` event
    chunk.cancel()
    await asyncio.gather(chunk, return_exceptions=True)
    await sync_to_async(store)(cast["replica"], [2])
    assert [json.loads(line)["seq"] for line in (await tail.receive_from(timeout=5)).split("\n")] == [2]


async def test_removing_bob_from_acme_ends_his_log_socket_and_event_stream_within_seconds(cast):
    bob_tail, bob_events = await log_socket(cast, cast["bob_token"]), await event_stream(cast["bob_token"])
    alice_tail, alice_events = await log_socket(cast, cast["alice_token"]), await event_stream(cast["alice_token"])

    def remove_bob():
        alice = browser_for(cast["alice"])
        alice.post("/tenant/", {"tenant": "acme"})
        assert alice.post(f"/members/{cast['bob_membership'].pk}/remove/").status_code == 302
        assert not Membership.objects.filter(user=cast["bob"], tenant=cast["acme"]).exists()

    await sync_to_async(remove_bob)()
    error, code = await socket_ended(bob_tail)
    assert code == consumers.CLOSE_FORBIDDEN and error["type"] == "error" and error["status"] == 403
    assert "no longer a member" in error["detail"]
    problem = await stream_ended(bob_events)
    assert problem["status"] == 403 and "no longer a member" in problem["detail"]
    await still_open(cast, cast["alice_token"], alice_tail, alice_events)  # alice is still a member
    await alice_tail.disconnect()
    await alice_events.aclose()


async def test_revoking_a_token_ends_the_sockets_and_streams_it_opened_within_seconds(cast):
    bob_tail, bob_events = await log_socket(cast, cast["bob_token"]), await event_stream(cast["bob_token"])

    def ticket_socket_url():  # a ticket bob's token bought opens a socket that ends with the token
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {cast['bob_token'].token}", HTTP_X_TENANT="acme")
        response = api.post(f"/api/v1/deployments/{cast['deployment'].pk}/logs/ticket")
        assert response.status_code == 201, response.content
        return response.json()["url"]

    by_ticket = WebsocketCommunicator(application, await sync_to_async(ticket_socket_url)())
    assert (await by_ticket.connect())[0]
    assert json.loads(await by_ticket.receive_from(timeout=5))["seq"] == 1
    other = await sync_to_async(issue_token)(user=cast["bob"])  # bob's other token is not revoked
    other_tail, other_events = await log_socket(cast, other), await event_stream(other)

    def revoke():
        token = cast["bob_token"]
        response = Client().post("/o/revoke_token/", {"token": token.token, "client_id": token.application.client_id})
        assert response.status_code == 200, response.content

    await sync_to_async(revoke)()
    for tail in (bob_tail, by_ticket):
        error, code = await socket_ended(tail)
        assert code == consumers.CLOSE_UNAUTHENTICATED and error["status"] == 401
        assert "revoked" in error["detail"]
    problem = await stream_ended(bob_events)
    assert problem["status"] == 401 and "revoked" in problem["detail"]
    await still_open(cast, other, other_tail, other_events)
    await other_tail.disconnect()
    await other_events.aclose()
