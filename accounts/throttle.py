"""A fixed-window limit on login and signup attempts per client address, in the shared cache.

Password guessing and signup floods come as many POSTs from one address; a form page (GET)
is never limited. The window is per address, not per account, so nobody can lock a victim out
by failing their password on purpose.
"""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.shortcuts import render


def throttled(scope: str):
    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method == "POST":
                limit, window = settings.ACCOUNT_THROTTLE
                key = f"throttle:{scope}:{request.META.get('REMOTE_ADDR', '')}"
                cache.add(key, 0, timeout=window)
                try:
                    count = cache.incr(key)
                except ValueError:  # expired between add and incr
                    cache.set(key, 1, timeout=window)
                    count = 1
                if count > limit:
                    response = render(request, "accounts/throttled.html", {"window": window}, status=429)
                    response["Retry-After"] = str(window)
                    return response
            return view(request, *args, **kwargs)

        return wrapper

    return decorate
