from __future__ import annotations

import re
import uuid

from django.core import mail
from django.test import Client

from tests.factories import UserFactory


def test_password_reset_mails_a_link_that_sets_a_new_password(db):
    UserFactory(username="carol@example.com", email="carol@example.com")
    client = Client()
    response = client.post("/accounts/password-reset/", {"email": "carol@example.com"})
    assert response.status_code == 302
    path = re.search(r"http://testserver(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)
    form = client.get(path, follow=True)
    response = client.post(form.redirect_chain[-1][0], {"new_password1": "another-long-phrase-7",
                                                        "new_password2": "another-long-phrase-7"})
    assert response.status_code == 302
    assert client.login(username="carol@example.com", password="another-long-phrase-7")


def test_login_is_throttled_per_address(db, settings):
    settings.ACCOUNT_THROTTLE = (3, 60)
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"  # a fresh window in the shared cache
    client = Client(REMOTE_ADDR=address)
    codes = [client.post("/accounts/login/", {"username": "x@example.com", "password": "nope"}).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert client.get("/accounts/login/").status_code == 200  # the form itself is never limited
