"""Passwords: argon2id hashes, checked off the event loop, and the rules a new one must pass.

A password is never logged, stored or returned: only its hash reaches the store. Hashing
takes tens of milliseconds and 64 MiB, so at most HASH_THREADS run at once (a burst of
sign-ins waits for them instead of taking the server's memory), always from a worker
thread (sync route functions run in FastAPI's thread pool), never on the event loop.
"""

from __future__ import annotations

import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

HASH_THREADS = 2

# The most common passwords of the public breach lists that the length rule alone lets
# through (8 characters and more); the rest of those lists are shorter.
COMMON = frozenset(
    """
    password password1 password12 password123 password1234 passw0rd p@ssw0rd p@ssword
    12345678 123456789 1234567890 12345678910 0123456789 987654321 9876543210 11111111
    123123123 123456123456 1q2w3e4r 1q2w3e4r5t 1q2w3e4r5t6y 1qaz2wsx 1qaz2wsx3edc zaq12wsx
    qwertyui qwertyuiop qwerty123 qwerty1234 qwertyuiop123 asdfghjkl asdfasdf zxcvbnm123
    iloveyou iloveyou1 iloveyou2 princess sunshine sunshine1 football football1 baseball
    basketball superman batman123 starwars trustno1 letmein1 letmeinplease welcome1
    welcome123 welcome2024 welcome2025 welcome2026 abc12345 abcd1234 abcdefgh abcdefghij
    aa123456 aaaaaaaa changeme changeme123 computer internet whatever michelle jennifer
    charlie1 dragon123 monkey123 master123 shadow123 football123 baseball123 admin123
    administrator adminadmin rootroot passwordpassword qazwsxedc qazwsxedcrfv 1234qwer
    q1w2e3r4 q1w2e3r4t5 q1w2e3r4t5y6 zxcvbnm1 mypassword secret123 secretpassword
    hello123 hello1234 helloworld loveyou1 lovely123 freedom1 summer2024 summer2025
    """.split()
)


def weakness(password: str, name: str, min_length: int) -> str | None:
    """Why `password` is too weak for the user `name`, as a sentence; None if it is not."""
    if len(password) < min_length:
        return f"a password needs at least {min_length} characters; this one has {len(password)}"
    folded = password.casefold()
    if name and name.casefold() in folded:
        return "a password must not contain the account's name"
    if len(set(folded)) == 1:
        return "a password of one character repeated is guessed at once; choose another"
    if folded in COMMON:
        return "this password is one of the most common ones, which are tried first; choose another"
    return None


class Passwords:
    """Hash and verify, at most HASH_THREADS at a time. Call from a worker thread."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._slots = threading.BoundedSemaphore(HASH_THREADS)
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        with self._slots:
            return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored`. With `stored` None (no such user) a hash is
        checked all the same, so that a wrong name takes as long as a wrong password."""
        known = stored is not None
        if stored is None:
            if self._dummy is None:
                self._dummy = self.hash("no such user, no such password")
            stored = self._dummy
        with self._slots:
            try:
                return self._hasher.verify(stored, password) and known
            except (VerificationError, InvalidHashError):
                return False
