"""Who is asking, and may they read this resource: BisQue's Basic/Mex logins and access rules.

BisQue accepts HTTP Basic credentials on every request, or a module-execution token
(``Authorization: Mex TOKEN`` or ``Mex USER:TOKEN``); no header is anonymous. Wrong
credentials are refused (401) on data, while the session check just answers "not logged
in". A resource a user may not read is reported like one that does not exist: 401 to an
anonymous request, 403 to a logged-in one (BisQue's ``check_access`` cannot tell the two
apart, so neither can a client).

A ViQi server (generation ``"viqi"``) also keeps cookie sessions (:class:`CookieSessions`):
valid credentials open one, and a request that carries its cookie and no ``Authorization``
header is that user's.

Passwords and tokens are compared as UTF-8 bytes in constant time, so any Unicode login
works (``hmac.compare_digest`` raises on non-ASCII ``str``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Collection, Mapping

__all__ = ["AccessRules", "AuthFailed", "Authenticator", "CookieSessions", "Refusal"]


class AuthFailed(Exception):
    """Credentials were sent and are wrong (or unreadable)."""


def _same(expected: str, given: str) -> bool:
    # compare_digest refuses non-ASCII str; as UTF-8 bytes every login compares
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


class CookieSessions:
    """Server-side login sessions named by a random cookie value (ViQi's ``mex_session``).

    At most ``capacity`` are kept, the least recently used dropped first: a client that
    sends credentials on every request without keeping cookies opens one per request.
    A cookie the server does not know (expired, dropped, forged) is simply anonymous.
    """

    cookie = "mex_session"

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._users: OrderedDict[str, str] = OrderedDict()
        self.opened = 0  # sessions opened since the start (tests read it)

    def open(self, user: str) -> str:
        """A new session for ``user``: the cookie value that names it."""
        value = secrets.token_urlsafe(24)
        self._users[value] = user
        self.opened += 1
        while len(self._users) > self.capacity:
            self._users.popitem(last=False)
        return value

    def user(self, value: str | None) -> str | None:
        """The user of the session ``value`` names, or None."""
        if not value:
            return None
        user = self._users.get(value)
        if user is not None:
            self._users.move_to_end(value)
        return user

    def close(self, value: str | None) -> None:
        """End a session (logout)."""
        if value:
            self._users.pop(value, None)

    def __len__(self) -> int:
        return len(self._users)


class Authenticator:
    """Checks an ``Authorization`` header against the known users and Mex tokens.

    ``mex_tokens`` is kept by reference on purpose: the module service adds the tokens of
    new module executions to it while the server runs. With ``sessions``, a request
    without that header may name a cookie session instead (:meth:`identify`).
    """

    def __init__(
        self,
        users: Mapping[str, str],
        mex_tokens: dict[str, str],
        sessions: CookieSessions | None = None,
    ) -> None:
        self.users = dict(users)
        self.mex_tokens = mex_tokens
        self.sessions = sessions

    def identify(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
        """The user of a request: its credentials, else its cookie session, else None.

        Credentials win over a cookie, and wrong ones raise :class:`AuthFailed` even when
        the cookie is good (the server cannot guess which one the caller meant).
        """
        header = headers.get("Authorization")
        if header or self.sessions is None:
            return self.user(header)
        return self.sessions.user(cookies.get(CookieSessions.cookie))

    def user(self, header: str | None) -> str | None:
        """The authenticated user, ``None`` when anonymous; raises :class:`AuthFailed`."""
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                raw = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise AuthFailed from None
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError:  # requests and aiohttp send Latin-1 by default
                decoded = raw.decode("latin-1")
            name, sep, password = decoded.partition(":")
            expected = self.users.get(name)
            if sep and expected is not None and _same(expected, password):
                return name
            raise AuthFailed
        if scheme.lower() == "mex":
            user, sep, token = value.rpartition(":")
            owner = self.mex_tokens.get(token)
            if owner is not None and (not sep or _same(owner, user)):
                return owner
        raise AuthFailed

    def session_user(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
        """Like :meth:`identify`, but wrong credentials are simply "not logged in"."""
        try:
            return self.identify(headers, cookies)
        except AuthFailed:
            return None


class Refusal:
    """Why a request is refused: a status and a short reason (rendered by the app)."""

    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.reason!r})"


LOGIN_REQUIRED = Refusal(401, "login required")
FORBIDDEN = Refusal(403, "forbidden")


class AccessRules:
    """Which resources are public, and which logged-in users may read the others.

    A uniq absent from ``access`` is readable by every logged-in user.
    """

    def __init__(self, public: Collection[str], access: Mapping[str, Collection[str]]) -> None:
        self.public = frozenset(public)
        self.access = {uniq: frozenset(names) for uniq, names in access.items()}

    def check(self, uniq: str, user: str | None) -> Refusal | None:
        """``None`` when ``user`` may read ``uniq``, else the refusal."""
        if uniq in self.public:
            return None
        if user is None:
            return LOGIN_REQUIRED
        allowed = self.access.get(uniq)
        if allowed is not None and user not in allowed:
            return FORBIDDEN
        return None

    def grant(self, uniq: str, owner: str, *, public: bool = False) -> None:
        """A new resource (an upload): readable by ``owner`` only, or by all when ``public``."""
        self.access[uniq] = frozenset({owner})
        if public:
            self.public = self.public | {uniq}

    @staticmethod
    def missing(user: str | None) -> Refusal:
        """How a resource that does not exist is refused (as BisQue's table service does)."""
        return FORBIDDEN if user is not None else LOGIN_REQUIRED
