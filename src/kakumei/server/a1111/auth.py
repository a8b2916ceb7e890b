"""Who an A1111 client is: HTTP Basic (user name, API key as the password: what A1111's
--api-auth asks of its clients) or a Bearer key, as the server's `a1111_auth` setting allows."""

from __future__ import annotations

import base64
import binascii

from fastapi import HTTPException, Request

from kakumei.server.addresses import client_address
from kakumei.server.deps import Caller, caller, services


def a1111_caller(request: Request) -> Caller:
    """The caller, by HTTP Basic (user name + API key) or Bearer key, as `a1111_auth` allows."""
    svc = services(request)
    mode = svc.settings.a1111_auth
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    basic_challenge = {"WWW-Authenticate": 'Basic realm="kakumei"'}
    if scheme.lower() == "basic":
        if mode == "key":
            raise HTTPException(401, "this server takes API keys: 'Authorization: Bearer YOUR_KEY'", {"WWW-Authenticate": "Bearer"})
        try:
            name, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise HTTPException(401, "malformed HTTP Basic credentials", basic_challenge) from None
        user = svc.users.by_key(password) if password else None
        if user is None or user.name != name:
            raise HTTPException(401, "Incorrect username or password (the password is your API key)", basic_challenge)
        return Caller(user, client_address(request, svc.settings.trusted_proxies))
    if header and mode == "basic":
        raise HTTPException(401, "use HTTP Basic: your user name, and your API key as the password", basic_challenge)
    if not header and not svc.settings.allow_anonymous and mode != "key":
        raise HTTPException(401, "this server needs you to log in: HTTP Basic with your user name and API key", basic_challenge)
    return caller(request)
