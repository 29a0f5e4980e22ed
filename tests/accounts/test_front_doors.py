"""Guessing at the plane's front doors, against the real /o/token/, /o/authorize/ and login
views, counted in the real Redis (accounts/throttle.py). The addresses are TEST-NET strings in
REMOTE_ADDR and X-Forwarded-For; nothing is sent anywhere."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.test import Client

from accounts import throttle
from accounts.clientip import client_ip
from tests.accounts.oauth_helpers import (
    REDIRECT_URI,
    api_client_for_tenant,
    client_credentials_token,
    public_app,
)
from tests.factories import UserFactory

LB = "192.0.2.10"  # the operator's load balancer


class Clock:
    def __init__(self, start: float):
        self.t = start

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def doors(settings, monkeypatch):
    """The production limits, a clean slate in Redis and a clock the test moves."""
    settings.ACCOUNT_THROTTLE = (20, 300)
    settings.ACCOUNT_GUESS_DELAY = (5, 300, 3600)
    settings.GANTRY_TRUSTED_PROXIES = []
    redis = throttle._redis(django_settings.REDIS_URL)
    for key in redis.scan_iter(match=throttle._key("*")):
        redis.delete(key)
    clock = Clock(1_900_000_000.0)
    monkeypatch.setattr(throttle, "now", clock)
    return clock


def guess(client_id: str, address: str, secret: str = "not-the-secret", **extra):
    return client_credentials_token(Client(REMOTE_ADDR=address, **extra), client_id, secret)


def test_the_21st_failure_from_one_address_is_a_429_with_retry_after(doors, acme):
    client_id, secret = api_client_for_tenant("acme")
    busy = "198.51.100.7"
    # A busy client with the right secret: successes never count.
    assert {guess(client_id, busy, secret).status_code for _ in range(30)} == {200}
    # Someone else tries client after client (a different one each time, so no one client's
    # delay is what stops them).
    guesser = "198.51.100.8"
    assert [guess(f"stolen-list-{n}", guesser).status_code for n in range(20)] == [401] * 20
    refused = guess(client_id, guesser)
    assert refused.status_code == 429
    assert refused.json()["error"] == "slow_down"
    assert 0 < int(refused["Retry-After"]) <= 300
    # Refused before the secret is looked at: the right one is refused too, or a 429 would say
    # "wrong" and a 200 "right" to a guesser past its limit.
    assert guess(client_id, guesser, secret).status_code == 429
    # The busy client is untouched, and once the window has passed the guesser's address may
    # try again.
    assert guess(client_id, busy, secret).status_code == 200
    doors.t += 301
    assert guess(client_id, guesser, secret).status_code == 200


def test_a_busy_client_keeps_its_tokens_while_strangers_at_its_address_guess(doors, acme):
    """A CI runner's NAT: the client succeeded from it before; someone else there guesses other
    clients' secrets until the address is out of tries. The right secret still gets its token."""
    client_id, secret = api_client_for_tenant("acme")
    nat = "198.51.100.20"
    assert guess(client_id, nat, secret).status_code == 200
    assert [guess(f"stolen-list-{n}", nat).status_code for n in range(20)] == [401] * 20
    assert guess("stolen-list-20", nat).status_code == 429
    assert {guess(client_id, nat, secret).status_code for _ in range(10)} == {200}
    # Guessing at this client from its own address is capped all the same.
    assert [guess(client_id, nat).status_code for _ in range(20)] == [401] * 20
    assert guess(client_id, nat, secret).status_code == 429


def test_many_addresses_against_one_client_wait_longer_and_longer(doors, acme):
    client_id, secret = api_client_for_tenant("acme")
    home = "198.51.100.30"
    assert guess(client_id, home, secret).status_code == 200  # the client's own address
    addresses = iter(f"203.0.113.{n}" for n in range(1, 250))
    # Five free failures, each from a fresh address (no per-address limit is near).
    assert [guess(client_id, next(addresses)).status_code for _ in range(5)] == [401] * 5
    waits = []
    for _ in range(5):
        assert guess(client_id, next(addresses)).status_code == 401  # evaluated, and it failed
        held = guess(client_id, next(addresses))  # the next stranger must wait
        assert held.status_code == 429
        waits.append(int(held["Retry-After"]))
        # The client's own address is never delayed by strangers' guesses.
        assert guess(client_id, home, secret).status_code == 200
        doors.t += waits[-1]
    assert waits == [1, 2, 4, 8, 16]
    # Growing, not a lockout: the wait is capped, and after it the right secret works anywhere.
    for _ in range(12):
        doors.t += 1000
        guess(client_id, next(addresses))
    doors.t += 1
    capped = guess(client_id, next(addresses))
    assert capped.status_code == 429 and int(capped["Retry-After"]) <= 300
    doors.t += 300
    assert guess(client_id, "203.0.113.251", secret).status_code == 200


def test_forwarded_for_counts_only_behind_a_trusted_proxy(doors, settings, acme):
    settings.GANTRY_TRUSTED_PROXIES = ["192.0.2.0/28"]
    client_id, secret = api_client_for_tenant("acme")
    # Through the trusted balancer, each client is counted on its own...
    for n in range(20):
        assert guess(f"stolen-list-{n}", LB, HTTP_X_FORWARDED_FOR="198.51.100.41").status_code == 401
    assert guess(client_id, LB, HTTP_X_FORWARDED_FOR="198.51.100.41").status_code == 429
    assert guess(client_id, LB, secret, HTTP_X_FORWARDED_FOR="198.51.100.42").status_code == 200
    # ...and what the client wrote to the left of the balancer's entry is not believed.
    spoofed = guess(client_id, LB, HTTP_X_FORWARDED_FOR="203.0.113.99, 198.51.100.41")
    assert spoofed.status_code == 429
    # From a peer that is not trusted, the header is ignored: changing it changes nothing.
    for n in range(20):
        assert guess(f"stolen-list-{n}", "198.51.100.50", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code == 401
    assert guess(client_id, "198.51.100.50", HTTP_X_FORWARDED_FOR="203.0.113.200").status_code == 429


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    ("198.51.100.1", "203.0.113.5", "198.51.100.1"),  # untrusted peer: header ignored
    (LB, "203.0.113.5", "203.0.113.5"),
    (LB, "203.0.113.6, 203.0.113.5", "203.0.113.5"),  # right-most untrusted hop
    (LB, "203.0.113.5, 192.0.2.11", "203.0.113.5"),  # a second trusted proxy is skipped
    (LB, "192.0.2.11", "192.0.2.11"),  # only proxies: the request began inside
    (LB, "", LB),
    (LB, "nonsense, 203.0.113.5", "203.0.113.5"),
    (LB, "203.0.113.5, nonsense", LB),  # garbage where a proxy writes: the nearest trusted hop
    (LB, "[2001:db8::1]:443", "2001:db8::/64"),  # IPv6 counts per /64
    ("::ffff:198.51.100.1", "", "198.51.100.1"),
])
def test_the_client_address(settings, rf, peer, forwarded, expected):
    settings.GANTRY_TRUSTED_PROXIES = ["192.0.2.0/28"]
    request = rf.get("/", REMOTE_ADDR=peer, **({"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {}))
    assert client_ip(request) == expected


def test_parallel_guesses_cannot_slip_under_the_limit(doors, settings):
    """Each attempt is counted when it starts: 30 guesses in flight at once get 20 tries."""
    attempts = [throttle.Attempt(ip="198.51.100.60", target=None) for _ in range(30)]
    for attempt in attempts:
        attempt.claim()
    assert sum(a.claimed for a in attempts) == 20
    assert all(a.refused[0] == "address" for a in attempts if not a.claimed)


def test_login_counts_failures_only(doors, db):
    UserFactory(username="carol@example.com")
    address = "198.51.100.70"
    good = {"username": "carol@example.com", "password": "correct horse battery staple"}
    for _ in range(25):
        assert Client(REMOTE_ADDR=address).post("/accounts/login/", good).status_code == 302
    wrong = Client(REMOTE_ADDR="198.51.100.71")
    codes = [wrong.post("/accounts/login/", {"username": f"user{n}@example.com", "password": "123456"}).status_code
             for n in range(21)]
    assert codes[:20] == [200] * 20 and codes[20] == 429  # the form again, with an error; then the 429
    assert wrong.get("/accounts/login/").status_code == 200  # the form itself is never limited


def test_authorize_failures_count_too(doors, alice):
    browser = Client(REMOTE_ADDR="198.51.100.80")
    browser.force_login(alice)
    app = public_app()
    for n in range(20):
        response = browser.get("/o/authorize/", {"response_type": "code", "client_id": f"no-such-{n}",
                                                 "redirect_uri": "http://127.0.0.1:8765/callback"})
        assert response.status_code == 400
    refused = browser.get("/o/authorize/", {"response_type": "code", "client_id": app.client_id})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0


def test_a_redis_outage_is_not_a_500(doors, monkeypatch, acme):
    import redis

    client_id, secret = api_client_for_tenant("acme")

    def down(url):
        raise redis.ConnectionError("down")

    monkeypatch.setattr(throttle, "_redis", down)
    assert guess(client_id, "198.51.100.90", secret).status_code == 200
    assert guess(client_id, "198.51.100.90").status_code == 401


def test_many_addresses_against_one_account_wait_longer_and_longer(doors, db):
    UserFactory(username="carol@example.com")
    form = {"username": "carol@example.com", "password": "123456"}
    addresses = iter(f"203.0.113.{n}" for n in range(1, 250))
    assert [Client(REMOTE_ADDR=next(addresses)).post("/accounts/login/", form).status_code
            for _ in range(6)] == [200] * 6  # five free failures, then one that sets a 1 s wait
    held = Client(REMOTE_ADDR=next(addresses)).post("/accounts/login/", form)
    assert held.status_code == 429 and held["Retry-After"] == "1"
    doors.t += 1
    assert Client(REMOTE_ADDR=next(addresses)).post("/accounts/login/", form).status_code == 200
    held = Client(REMOTE_ADDR=next(addresses)).post("/accounts/login/", form)
    assert held.status_code == 429 and held["Retry-After"] == "2"
    # Carol herself, after the wait, gets in from anywhere: a delay, not a lockout.
    doors.t += 2
    carol = Client(REMOTE_ADDR=next(addresses)).post(
        "/accounts/login/", {"username": "carol@example.com", "password": "correct horse battery staple"})
    assert carol.status_code == 302


def test_the_staff_login_is_guarded_too(doors, db):
    UserFactory(username="ops@example.com", is_staff=True)
    guesser = Client(REMOTE_ADDR="198.51.100.100")
    codes = [guesser.post("/admin/login/", {"username": f"ops{n}@example.com", "password": "123456"}).status_code
             for n in range(21)]
    assert codes[:20] == [200] * 20 and codes[20] == 429
    staff = Client(REMOTE_ADDR="198.51.100.101").post(
        "/admin/login/", {"username": "ops@example.com", "password": "correct horse battery staple"})
    assert staff.status_code == 302


def test_strangers_cannot_make_a_public_client_wait_for_everyone(doors, alice):
    """The CLI's client_id is published and it has no secret to guess: failures in its name from
    many addresses (bad codes at /o/token/, bad redirect URIs at /o/authorize/) must not delay a
    new user of it, who signs in from an address the CLI never succeeded from."""
    app = public_app()
    addresses = iter(f"203.0.113.{n}" for n in range(1, 250))
    for _ in range(12):
        assert Client(REMOTE_ADDR=next(addresses)).post("/o/token/", {
            "grant_type": "authorization_code", "code": "guessed", "redirect_uri": REDIRECT_URI,
            "client_id": app.client_id, "code_verifier": "x" * 43}).status_code == 400
        stranger = Client(REMOTE_ADDR=next(addresses))
        stranger.force_login(alice)
        assert stranger.get("/o/authorize/", {"response_type": "code", "client_id": app.client_id,
                                              "redirect_uri": "http://evil.example/cb"}).status_code == 400
    newcomer = Client(REMOTE_ADDR=next(addresses))
    newcomer.force_login(alice)
    consent = newcomer.get("/o/authorize/", {"response_type": "code", "client_id": app.client_id,
                                             "redirect_uri": REDIRECT_URI, "code_challenge": "c" * 43,
                                             "code_challenge_method": "S256", "scope": "deployments:read"})
    assert consent.status_code == 200
    exchange = Client(REMOTE_ADDR=next(addresses)).post("/o/token/", {
        "grant_type": "authorization_code", "code": "stale", "redirect_uri": REDIRECT_URI,
        "client_id": app.client_id, "code_verifier": "x" * 43})
    assert exchange.status_code == 400  # evaluated (and wrong), not held back with a 429
