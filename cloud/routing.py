"""WebSocket routes: the node agents' link (/ws/v1/agent/). The log and event streams join
with their issue."""

from django.urls import path

from nodes.consumers import AgentConsumer

websocket_urlpatterns: list = [
    path("ws/v1/agent/", AgentConsumer.as_asgi()),
]
