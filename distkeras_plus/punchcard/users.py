"""Identities: a user is a name and the SHA-256 of a random token that only the user holds.

The token is printed once by `dk punchcard add-user` and never stored. 32 random bytes make
brute force hopeless, so a plain hash (no salt, no slow KDF) is enough: there is no password
to guess, and a leaked database does not let anyone act as a user.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from distkeras_plus.errors import UserExistsError
from distkeras_plus.punchcard.store import Store

TOKEN_PREFIX = "dkp_"  # noqa: S105 - recognisable in a config file or a secret scanner's report
NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,63}$")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UserExistsError(
            f"user names are 1-64 lower-case letters, digits, '_', '.', '-', starting with a letter: {name!r}"
        )
    return name


def add_user(store: Store, name: str) -> str:
    """Creates the user and returns their token: the only time it exists outside the user's hands."""
    token = new_token()
    store.add_user(check_name(name), token_hash(token))
    return token


def authenticate(store: Store, token: str) -> str | None:
    """The user holding `token`, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    return store.user_for_hash(token_hash(token))
