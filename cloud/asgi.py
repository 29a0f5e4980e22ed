"""The one ASGI application daphne serves: HTTP (Django) and WebSocket (Channels)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloud.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs apps loaded)

from cloud.routing import websocket_urlpatterns  # noqa: E402
from cloud.streams import BrowserOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # A socket opened by a page of another origin is refused before it opens (streams.py).
        "websocket": BrowserOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
