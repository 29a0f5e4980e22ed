"""`GET /api/v1/events`: the caller's tenant's events as Server-Sent Events.

An async Django view (not DRF: DRF renders a whole body, and a stream never ends), served by
daphne like everything else. Each event is one SSE message: `id:` the event id, `data:` the
same JSON the events list shows (it names the deployment). There is no `event:` line, unlike
Volant's feed: named events reach only listeners registered for each name, and a browser's
`EventSource.onmessage` would see none of them.

Resuming is exact: ids follow commit order (models.Event), so after a reconnect with
`Last-Event-ID` (or `?after=`) the follower gets every later event once, in order. The stream
waits on the tenant's channel-layer group for a hint that something committed, and reads the
database either way at least every 15 s, when it also sends a keep-alive comment (proxies and
browsers drop a connection that stays silent).

The caller's access is checked again every STREAM_ACCESS_RECHECK_S (streams.access_lost): once
its token is revoked or expired, or its user removed from the tenant, the stream sends an
`event: closed` message whose data is a problem (status 401 or 403, and why) and ends. A
browser's EventSource then reconnects and gets that status, which stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import JsonResponse, StreamingHttpResponse
from django.views import View
from rest_framework.exceptions import ValidationError

from cloud import streams
from cloud.deployments import feeds, selectors
from cloud.deployments.serializers import EventStreamQuery
from cloud.errors import PROBLEM_CONTENT_TYPE, flatten_details, problem_body
from cloud.exceptions import NotFound

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
RETRY_MS = 2000
PAGE = 500


def _problem(request, status: int, detail: str, code: str, errors=None) -> JsonResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return JsonResponse(problem_body(status, detail=detail, code=code, instance=request.path, errors=errors),
                        status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers)


def _read(fn, /, **kwargs):
    """A database read from the stream: in a thread, and the connection handed back to the pool
    right after, so a thousand idle followers do not hold a thousand connections."""

    def run():
        try:
            return fn(**kwargs)
        finally:
            if not connection.in_atomic_block:  # a test's transaction is not ours to close
                connection.close()

    return sync_to_async(run)()


def _page(*, tenant, after: int, deployment_id, types) -> tuple[list[str], int, bool]:
    page = selectors.events_for_tenant(tenant=tenant, after=after, deployment_id=deployment_id, types=types,
                                       limit=PAGE)
    messages = []
    for event in page.items:
        data = json.dumps(feeds.event_item(event), separators=(",", ":"))
        messages.append(f"id: {event.pk}\ndata: {data}\n\n")
    return messages, (page.items[-1].pk if page.items else after), page.has_more


class _Recheck:
    """When an open stream next asks whether its caller may still read, and the asking: at most
    once per STREAM_ACCESS_RECHECK_S, however often the stream wakes."""

    def __init__(self, access: streams.Access, loop: asyncio.AbstractEventLoop):
        self.access, self.loop = access, loop
        self.due = loop.time() + settings.STREAM_ACCESS_RECHECK_S

    async def lost(self) -> streams.StreamRefused | None:
        if self.loop.time() < self.due:
            return None
        self.due = self.loop.time() + settings.STREAM_ACCESS_RECHECK_S
        return await _read(streams.access_lost, access=self.access)


def _closed(tenant, lost: streams.StreamRefused) -> str:
    log.info("event stream of tenant %s ended: %s", tenant.pk, lost.detail)
    problem = {"status": lost.status, "detail": lost.detail, "code": lost.code}
    return f"event: closed\ndata: {json.dumps(problem)}\n\n"


class EventStreamView(View):
    http_method_names = ["get"]

    async def get(self, request):
        session_user = await request.auser()
        try:
            caller = await sync_to_async(streams.caller_for)(
                authorization=request.headers.get("Authorization"), session_user=session_user,
                tenant_slug=request.headers.get("X-Tenant") or None, scope="deployments:read")
        except streams.StreamRefused as exc:
            return _problem(request, exc.status, exc.detail, exc.code)
        query = EventStreamQuery(data=request.GET)
        if not query.is_valid():
            errors = flatten_details(ValidationError(query.errors).get_full_details())
            return _problem(request, 400, "Invalid " + ", ".join(sorted({e["field"] for e in errors if e["field"]})),
                            "validation_error", errors)
        params = query.validated_data
        after = params.get("after", 0)
        last_event_id = request.headers.get("Last-Event-ID", "").strip()
        if last_event_id:
            if not last_event_id.isdigit() or len(last_event_id) > 18:
                return _problem(request, 400, "Invalid Last-Event-ID", "validation_error",
                                [{"field": "Last-Event-ID", "message": "An event id.", "code": "invalid"}])
            after = int(last_event_id)  # what the browser resumes from wins over the URL it reuses
        deployment_id = params.get("deployment")
        if deployment_id is not None:
            try:
                await _read(selectors.deployment_id_for, tenant=caller.tenant, deployment_id=deployment_id)
            except NotFound as exc:
                return _problem(request, 404, exc.detail, "not_found")
        response = StreamingHttpResponse(
            self.stream(tenant=caller.tenant, after=after, deployment_id=deployment_id,
                        types=params.get("type", ()), follow=params["follow"], access=caller.access),
            content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold events back
        return response

    async def stream(self, *, tenant, after: int, deployment_id, types, follow: bool, access: streams.Access):
        # daphne sends the status line and headers with the first body bytes: send some now,
        # so a client knows at once that it is subscribed (and how soon to retry).
        yield f"retry: {RETRY_MS}\n\n"
        loop = asyncio.get_running_loop()
        layer = get_channel_layer() if follow else None
        channel = await layer.new_channel() if layer is not None else None
        group = feeds.events_group(tenant.pk)
        hint: asyncio.Future | None = None  # a receive on the channel layer, kept across wake-ups
        recheck = _Recheck(access, loop)
        try:
            if channel is not None:
                await layer.group_add(group, channel)  # before the first read: no commit falls between
            while True:
                if (lost := await recheck.lost()) is not None:
                    yield _closed(tenant, lost)
                    return
                messages, after, more = await _read(_page, tenant=tenant, after=after, deployment_id=deployment_id,
                                                    types=types)
                for message in messages:
                    yield message
                if more:
                    continue
                if not follow:
                    return
                # Wait for a hint that something committed, but no longer than the next access
                # check or keep-alive. The receive goes on across those wake-ups: cancelling it
                # every few seconds would cost a Redis round trip each time, and could lose a hint.
                keepalive_at = loop.time() + KEEPALIVE_S
                while True:
                    if hint is None:
                        hint = asyncio.ensure_future(layer.receive(channel))
                    done, _ = await asyncio.wait({hint}, timeout=max(0.0, min(recheck.due, keepalive_at) - loop.time()))
                    if done:
                        hint, finished = None, hint
                        finished.result()  # a failed receive (Redis away) ends the stream, as before
                        break
                    if loop.time() >= recheck.due:
                        if (lost := await recheck.lost()) is not None:
                            yield _closed(tenant, lost)
                            return
                        if loop.time() < keepalive_at:
                            continue
                    yield ": keep-alive\n\n"
                    await layer.group_add(group, channel)  # channels-redis expires group members after a day
                    break  # and read the database, in case a hint was lost
        finally:
            if hint is not None:
                hint.cancel()
            if channel is not None:
                try:
                    await layer.group_discard(group, channel)
                except Exception:  # noqa: BLE001 - Redis away: the membership expires by itself
                    log.debug("could not leave %s", group, exc_info=True)
