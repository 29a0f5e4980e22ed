"""A Content-Security-Policy for HTML pages: scripts and styles only from our own static files.

Every script the dashboard runs is a file under /static/, so an injected <script> or inline
handler in a deployment's name, env or log line cannot run even if escaping were ever missed.
The admin and the API's own HTML (docs) are left to their defaults.
"""

from __future__ import annotations

POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",  # CSP3: 'self' covers this host's ws:// and wss:// too
    "frame-ancestors 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "object-src 'none'",
])
SKIP_PREFIXES = ("/admin/", "/api/")


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (response.get("Content-Type", "").startswith("text/html")
                and not request.path.startswith(SKIP_PREFIXES) and "Content-Security-Policy" not in response):
            response["Content-Security-Policy"] = POLICY
        return response
