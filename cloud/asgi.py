"""The one ASGI application daphne serves: HTTP (Django) and WebSocket (Channels)."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloud.settings")

from cloud.production import refuse_unsafe  # noqa: E402

# Before anything is served: with DEBUG off, an unsafe SECRET_KEY, FERNET_KEYS or ALLOWED_HOSTS
# ends daphne here, one line each (SystemExit, so no traceback).
refuse_unsafe("web (cloud.asgi)")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs apps loaded)

from cloud.routing import websocket_urlpatterns  # noqa: E402
from cloud.streams import BrowserOriginValidator  # noqa: E402



def _freeze_at_first_call(app):
    """Hand the collector's oldest generation over to gc.freeze() once the server has started
    and the first connection came: everything made until then (Django's apps, URL conf,
    models, daphne and Twisted) lives as long as the process. Walking it on every full
    collection paused daphne for up to 123 ms about every 2 s while it streamed 20,000 log
    lines a second to ten followers (bench/logs.py: p99 445 ms); frozen, the longest pause was
    24 ms (p99 214 ms)."""
    frozen = False

    async def asgi(scope, receive, send):
        nonlocal frozen
        if not frozen:
            frozen = True
            gc.freeze()
        return await app(scope, receive, send)

    return asgi


application = _freeze_at_first_call(ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # A socket opened by a page of another origin is refused before it opens (streams.py).
        "websocket": BrowserOriginValidator(URLRouter(websocket_urlpatterns)),
    }
))
