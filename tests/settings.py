"""Test settings: the project's, with a fast password hasher (the default PBKDF2 is slow on purpose and
tripled the dashboard tests' CPU). Everything else is production's, services included."""

from portal.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
