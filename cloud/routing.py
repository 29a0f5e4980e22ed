"""WebSocket routes. The agent consumer (/ws/v1/agent/) and the log/event streams arrive with
their issues; the router exists now so daphne serves one application from day one."""

websocket_urlpatterns: list = []
