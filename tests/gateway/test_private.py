"""Private routes: only a request with a live key of this route reaches the backend, and without its key."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import GATEWAY_IP, Client, problem
from tests.gateway.tables import backend, route, table

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
PORT, OTHER_PORT = 18011, 18012
HOST = "secret.gantry.localhost"
KEY, SECOND_KEY, OTHER_ROUTES_KEY = "gk_" + "A" * 43, "gk_second-key", "gk_other-route"


def tables(*keys: str) -> dict:
    return table(route("secret", backend(GATEWAY_IP, PORT), access="private", keys=keys),
                 route("other", backend(GATEWAY_IP, OTHER_PORT), access="private", keys=(OTHER_ROUTES_KEY,)))


@pytest.fixture(scope="module", autouse=True)
def routes(gateway, backends):
    backends.http(PORT, "secret")
    backends.http(OTHER_PORT, "other")
    gateway.push(tables(KEY, SECOND_KEY))


def paths_seen(backends) -> list[str]:
    return [r["path"] for r in backends.seen(PORT)]


@pytest.mark.parametrize("headers", [
    {},
    {"Gantry-Key": "gk_wrong"},
    {"Gantry-Key": ""},
    {"Gantry-Key": KEY.lower()},
    {"Gantry-Key": KEY[:-1]},
    {"Gantry-Key": OTHER_ROUTES_KEY},  # a live key, of another route
    {"Authorization": f"Bearer {KEY}"},  # the workload's header is not ours
], ids=["none", "wrong", "empty", "case", "truncated", "other-route", "authorization"])
def test_a_request_without_a_valid_key_is_401_and_never_reaches_the_backend(client, backends, headers):
    path = f"/denied-{len(headers)}-{sorted(headers.values())}"
    response = client.get(HOST, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Gantry-Key"
    assert "Gantry-Key" in problem(response)["detail"]
    assert path not in paths_seen(backends)


def test_a_valid_key_passes_and_the_backend_never_sees_it(client, backends):
    response = client.get(HOST, "/with-key", headers={"Gantry-Key": KEY, "Authorization": "Bearer workload-token"})
    assert response.status_code == 200
    seen = {name.lower(): value for name, value in response.json()["headers"]}
    assert "gantry-key" not in seen
    assert seen["authorization"] == "Bearer workload-token"  # the workload's own auth passes untouched


def test_every_live_key_of_the_route_works(client):
    assert client.get(HOST, "/second", headers={"Gantry-Key": SECOND_KEY}).status_code == 200


def test_no_request_the_gateway_refused_was_ever_seen_by_the_backend(client, backends):
    for _ in range(20):
        assert client.get(HOST, "/refused-burst", headers={"Gantry-Key": "gk_guess"}).status_code == 401
    assert "/refused-burst" not in paths_seen(backends)
    assert all("gantry-key" not in {n.lower() for n, _ in r["headers"]} for r in backends.seen(PORT))


def test_a_revoked_key_is_refused_as_soon_as_the_push_returns(gateway, certs, backends):
    before = Client(certs)
    assert before.get(HOST, "/before-revoke", headers={"Gantry-Key": SECOND_KEY}).status_code == 200
    before.close()
    gateway.push(tables(KEY))
    after = Client(certs)
    try:
        assert after.get(HOST, "/after-revoke", headers={"Gantry-Key": SECOND_KEY}).status_code == 401
        assert after.get(HOST, "/kept", headers={"Gantry-Key": KEY}).status_code == 200
    finally:
        after.close()
    assert "/after-revoke" not in paths_seen(backends)
    gateway.push(tables(KEY, SECOND_KEY))


@pytest.mark.parametrize("keys", [("gk_decoy", KEY), (KEY, "gk_decoy"), (KEY, KEY)])
def test_a_request_with_two_key_lines_is_refused(client, backends, keys):
    """Which of two lines counts would be HAProxy's detail to get wrong: exactly one is allowed."""
    path = f"/twice-{keys.index(KEY)}-{len(set(keys))}"
    response = client.http.get(f"https://{GATEWAY_IP}{path}", headers=[("Host", HOST)] + [("Gantry-Key", k) for k in keys],
                               extensions={"sni_hostname": HOST})
    assert response.status_code == 401
    assert path not in paths_seen(backends)
