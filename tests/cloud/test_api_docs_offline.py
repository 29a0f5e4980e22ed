"""/api/v1/docs/ and /api/v1/redoc/ load nothing from another host (issue 19: they were blank
offline, loading swagger-ui-dist@latest from a CDN)."""

from __future__ import annotations

import re

import pytest
from django.test import Client


@pytest.mark.parametrize("path", ["/api/v1/docs/", "/api/v1/redoc/"])
def test_docs_pages_use_only_our_static_files(db, path):
    response = Client().get(path)
    assert response.status_code == 200
    body = response.content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', body)
    assert sources and all(not s.startswith(("http:", "https:", "//")) for s in sources), sources
    assert "/static/drf_spectacular_sidecar/" in body
    assert "cdn.jsdelivr" not in body and "@latest" not in body
