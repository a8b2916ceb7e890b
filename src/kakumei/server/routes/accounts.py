"""Accounts: sign up (/api/v1/accounts), sign in (/api/v1/sessions), guest sessions
(/api/v1/guests) and your API keys (/api/v1/me/keys). The decisions are server/signup.py's.

Sync functions: FastAPI runs them in its thread pool, where passwords are hashed off the
event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from kakumei.schemas import OneLine, refuse_control
from kakumei.server import signup
from kakumei.server.bodies import documented, json_body
from kakumei.server.deps import Address, Svc, Visitor, Who
from kakumei.server.models import KeyOut, NewAccount, NewKey, SessionKey
from kakumei.server.openapi import problems

router = APIRouter(prefix="/api/v1", tags=["accounts"])


MAX_PASSWORD = 1024


def _password(value: object) -> str:
    # Every refusal in its own words: a validation error may repeat a short value it was
    # given, and a password is never repeated.
    if not isinstance(value, str):
        raise ValueError("password must be text (a JSON string)")
    if len(value) > MAX_PASSWORD:
        raise ValueError(f"a password may be at most {MAX_PASSWORD} characters")
    try:
        return refuse_control(value)
    except ValueError:
        raise ValueError("a password may not hold control characters") from None


Password = Annotated[str, PlainValidator(_password), WithJsonSchema({"type": "string", "maxLength": MAX_PASSWORD})]


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: OneLine = Field(max_length=100, description=signup.NAME_RULE)
    password: Password = Field(description="at least min_password_length characters; never shown again")
    invite: OneLine | None = Field(None, max_length=200, description="an invite code, where sign-up is by invite")


class SignInIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: OneLine = Field(max_length=100)
    password: Password


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: OneLine = Field("", max_length=64, description="what the key is for, to tell your keys apart")
    horde: bool = Field(False, description="a key of the AI Horde's shape (22 characters) for /api/v2 clients and workers")


@router.post("/accounts", status_code=201, response_model=NewAccount, responses=problems(401, 403, 409, 413, 415, 422, 429),
             openapi_extra=documented(AccountIn))
def sign_up(svc: Svc, who: Visitor, body: Annotated[AccountIn, Depends(json_body(AccountIn))]) -> NewAccount:
    """Make an account and get its first key. Sent with a guest's key, the guest becomes the
    account, keeping its jobs and images (and the guest key keeps working)."""
    return signup.sign_up(svc, who, body.name, body.password, body.invite)


@router.post("/sessions", response_model=SessionKey, responses=problems(401, 409, 413, 415, 422, 429),
             openapi_extra=documented(SignInIn))
def sign_in(svc: Svc, addr: Address, body: Annotated[SignInIn, Depends(json_body(SignInIn))]) -> SessionKey:
    """Sign in with name and password: a new API key labelled sign-in."""
    return signup.sign_in(svc, addr, body.name, body.password)


@router.post("/guests", status_code=201, response_model=NewAccount, responses=problems(403, 413, 415, 429))
def add_guest(svc: Svc, addr: Address) -> NewAccount:
    """A guest session: a user of your own with its own key, without a password."""
    return signup.add_guest(svc, addr)


@router.get("/me/keys", response_model=list[KeyOut], responses=problems(401, 403))
def list_keys(svc: Svc, who: Who) -> list[KeyOut]:
    """Your API keys that work (never the keys themselves)."""
    return signup.list_keys(svc, who)


@router.post("/me/keys", status_code=201, response_model=NewKey, responses=problems(401, 403, 409, 413, 415, 422),
             openapi_extra=documented(KeyIn, optional=True))
def add_key(svc: Svc, who: Who, body: Annotated[KeyIn, Depends(json_body(KeyIn, optional=True))]) -> NewKey:
    """A new API key for you, shown once."""
    return signup.add_key(svc, who, body.label, horde=body.horde)


@router.delete("/me/keys/{key_id}", status_code=204, response_class=Response, responses=problems(401, 403, 404, 409))
def revoke_key(key_id: int, svc: Svc, who: Who) -> Response:
    """Revoke one of your keys; it stops working with the next request. An operator's user
    (no password) keeps its last key."""
    signup.revoke_key(svc, who, key_id)
    return Response(status_code=204)
