import pytest


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # PBKDF2's 1,000,000 rounds cost about a second per user the cast creates; the hash
    # algorithm is not what these tests are about. (Candidate for tests/conftest.py.)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
