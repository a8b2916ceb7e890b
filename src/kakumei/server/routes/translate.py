"""/api/v1/translate: the English a job would encode, for the web page's live preview under
the prompt. The same translation `POST /api/v1/jobs` applies (`submission.translated`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException

from kakumei.schemas import GenerationRequest
from kakumei.server.bodies import json_body
from kakumei.server.deps import Svc
from kakumei.server.models import TranslateIn, TranslateOut
from kakumei.server.openapi import problems
from kakumei.server.submission import SubmitRefused, translated

router = APIRouter(prefix="/api/v1", tags=["translate"])


@router.post("/translate", response_model=TranslateOut, responses=problems(413, 415, 422))
def translate(svc: Svc, body: Annotated[TranslateIn, Depends(json_body(TranslateIn))]) -> TranslateOut:
    """Japanese in the prompts in English, as a job would encode them; needs no key."""
    try:
        request = GenerationRequest(prompt=body.prompt, negative_prompt=body.negative_prompt)
        done = translated(svc, request)
    except SubmitRefused as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return TranslateOut(
        translated=done is not request,
        prompt=done.prompt,
        negative_prompt=done.negative_prompt,
        untranslated=list(done.untranslated),
        translator=svc.settings.translator if svc.settings.translator in ("dictionary", "off") else "model",
    )
