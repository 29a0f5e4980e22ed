"""The one ASGI application daphne serves: HTTP (Django) and WebSocket (Channels)."""

import os
import sys

from django.core.asgi import get_asgi_application

# daphne's loop and the thread that stores agents' log batches share the GIL. The thread gives it
# up at every PostgreSQL round trip and then waits for the loop to hand it back, which CPython
# forces only after the switch interval (5 ms by default): at a few round trips per batch that
# wait, not the work, limited a node's log rate (bench/logs.py: 17,600 -> 19,700 lines/s stored).
sys.setswitchinterval(0.0005)

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
