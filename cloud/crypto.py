"""Secrets at rest: Fernet (AES-128-CBC + HMAC) from `cryptography`, keys from settings.

MultiFernet encrypts with the first key and decrypts with any, so an operator rotates by
prepending a new key to FERNET_KEYS and re-encrypting at leisure.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@lru_cache(maxsize=1)
def _fernet() -> MultiFernet:
    keys = list(settings.FERNET_KEYS)
    if not keys:
        # Local default only: derived from SECRET_KEY so `make up` needs no extra setting.
        digest = hashlib.sha256(("gantry-fernet:" + settings.SECRET_KEY).encode()).digest()
        keys = [base64.urlsafe_b64encode(digest).decode()]
    return MultiFernet([Fernet(k) for k in keys])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("secret cannot be decrypted with the configured FERNET_KEYS") from exc


def encrypt_json(value) -> str:
    return encrypt(json.dumps(value, separators=(",", ":"), sort_keys=True))


def decrypt_json(token: str):
    return json.loads(decrypt(token)) if token else None
