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
"""

from __future__ import annotations

import asyncio
import json
import logging

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import JsonResponse, StreamingHttpResponse
from django.views import View
from rest_framework.exceptions import ValidationError

from cloud import streams
from cloud.deployments import feeds, selectors
from cloud.deployments.serializers import EventStreamQuery
from cloud.errors import PROBLEM_CONTENT_TYPE, _flatten, problem_body
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
            errors = _flatten(ValidationError(query.errors).get_full_details())
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
                        types=params.get("type", ()), follow=params["follow"]),
            content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold events back
        return response

    async def stream(self, *, tenant, after: int, deployment_id, types, follow: bool):
        # daphne sends the status line and headers with the first body bytes: send some now,
        # so a client knows at once that it is subscribed (and how soon to retry).
        yield f"retry: {RETRY_MS}\n\n"
        layer = get_channel_layer() if follow else None
        channel = await layer.new_channel() if layer is not None else None
        group = feeds.events_group(tenant.pk)
        try:
            if channel is not None:
                await layer.group_add(group, channel)  # before the first read: no commit falls between
            while True:
                messages, after, more = await _read(_page, tenant=tenant, after=after, deployment_id=deployment_id,
                                                    types=types)
                for message in messages:
                    yield message
                if more:
                    continue
                if not follow:
                    return
                try:
                    await asyncio.wait_for(layer.receive(channel), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    await layer.group_add(group, channel)  # channels-redis expires group members after a day
        finally:
            if channel is not None:
                try:
                    await layer.group_discard(group, channel)
                except Exception:  # noqa: BLE001 - Redis away: the membership expires by itself
                    log.debug("could not leave %s", group, exc_info=True)
