"""Email confirmation for self-service signups: a signed link, no table.

The link carries the user's id and address signed with SECRET_KEY (django.core.signing), so
it cannot be forged and stops working if the address changes. Confirming records the address as
the user's (accounts.models.EmailConfirmation: only then can an operator hand them a tenant) and
tells billing (`signals.email_confirmed`) to grant the personal tenant's trial credit, in the
same transaction; billing's ledger key "trial" makes a second click the same entry.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.mail import send_mail
from django.db import transaction

from accounts import signals
from accounts.models import EmailConfirmation
from accounts.selectors import personal_tenant_for
from accounts.services import email_mark_confirmed
from cloud.exceptions import InvalidInput

SALT = "accounts.email-confirmation"
MAX_AGE_S = 3 * 24 * 3600


def confirmation_token(user) -> str:
    return signing.dumps({"u": user.pk, "e": user.email}, salt=SALT)


def confirmation_send(*, user, url_for) -> None:
    """`url_for(token)` builds the absolute link on the host the user signed up through."""
    url = url_for(confirmation_token(user))
    send_mail("Confirm your Gantry account",
              f"Welcome to Gantry.\n\nConfirm {user.email} to receive your trial credit:\n{url}\n\n"
              "The link works for three days. If you did not sign up, ignore this mail.",
              settings.DEFAULT_FROM_EMAIL, [user.email])


@transaction.atomic
def email_confirm(*, token: str):
    try:
        data = signing.loads(token, salt=SALT, max_age=MAX_AGE_S)
    except signing.BadSignature:
        raise InvalidInput("token", "This confirmation link is invalid or has expired; log in to get a new one.") from None
    user = get_user_model().objects.filter(pk=data.get("u"), email=data.get("e")).first()
    if user is None:
        raise InvalidInput("token", "This confirmation link is invalid or has expired; log in to get a new one.")
    email_mark_confirmed(user=user, how=EmailConfirmation.How.LINK)
    signals.email_confirmed.send(sender=get_user_model(), user=user, personal_tenant=personal_tenant_for(user=user))
    return user
