"""horde_sdk, the AI Horde's own Python library, against a kakumei server: run as a program
(`AI_HORDE_URL` must be set before horde_sdk is imported, so each run is its own process).

    python horde_sdk_client.py SCENARIO APIKEY

Prints one JSON object with what the scenario saw; every response went through horde_sdk's
own pydantic models, so a shape they refuse fails the run.
"""

from __future__ import annotations

import io
import json
import sys
import time
from typing import Any

from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIManualClient, AIHordeAPISimpleClient
from horde_sdk.ai_horde_api.apimodels import (
    AIHordeHeartbeatRequest,
    AIHordeHeartbeatResponse,
    DeleteImageGenerateRequest,
    FindUserRequest,
    UserDetailsResponse,
    HordePerformanceRequest,
    HordePerformanceResponse,
    HordeStatusModelsAllRequest,
    HordeStatusModelsAllResponse,
    ImageGenerateAsyncRequest,
    ImageGenerateAsyncResponse,
    ImageGenerateCheckRequest,
    ImageGenerateCheckResponse,
    ImageGenerateJobPopRequest,
    ImageGenerateJobPopResponse,
    ImageGenerateStatusResponse,
    ImageGenerationInputPayload,
    ImageGenerationJobSubmitRequest,
    JobSubmitResponse,
)
from horde_sdk.generic_api.apimodels import RequestErrorResponse

SMALL = ImageGenerationInputPayload(width=64, height=64, steps=2, seed="42", sampler_name="k_euler", n=2)


def ok(response: Any, expected: type) -> Any:
    if isinstance(response, RequestErrorResponse):
        raise SystemExit(f"the server refused: {response.message} ({response.rc})")
    assert isinstance(response, expected), response
    return response


def generate(apikey: str) -> dict[str, Any]:
    """The simple client's whole flow: async, check until done, status, download."""
    client = AIHordeAPISimpleClient()
    status, job_id = client.image_generate_request(
        ImageGenerateAsyncRequest(apikey=apikey, prompt="a red fox in snow", params=SMALL, models=[])
    )
    images = [client.download_image_from_generation(g) for g in status.generations]
    manual = AIHordeAPIManualClient()
    user = ok(manual.submit_request(FindUserRequest(apikey=apikey), UserDetailsResponse), UserDetailsResponse)
    return {
        "id": str(job_id), "seeds": [g.seed for g in status.generations], "sizes": [list(i.size) for i in images],
        "kudos": user.kudos, "username": user.username,
    }


def inline(apikey: str) -> dict[str, Any]:
    client = AIHordeAPISimpleClient()
    status, _ = client.image_generate_request(
        ImageGenerateAsyncRequest(apikey=apikey, prompt="a fox", params=SMALL.model_copy(update={"n": 1}), r2=False,
                                  models=["kakumei:tiny"])
    )
    images = [client.download_image_from_generation(g) for g in status.generations]
    return {"sizes": [list(i.size) for i in images], "formats": [i.format for i in images]}


def cancel(apikey: str) -> dict[str, Any]:
    """Submit, check, then cancel with the manual client (nothing runs the job meanwhile)."""
    client = AIHordeAPIManualClient()
    sent = ok(client.submit_request(ImageGenerateAsyncRequest(apikey=apikey, prompt="a fox", params=SMALL, models=[]),
                                    ImageGenerateAsyncResponse), ImageGenerateAsyncResponse)
    check = ok(client.submit_request(ImageGenerateCheckRequest(id=sent.id_), ImageGenerateCheckResponse),
               ImageGenerateCheckResponse)
    deleted = ok(client.submit_request(DeleteImageGenerateRequest(id=sent.id_), ImageGenerateStatusResponse),
                 ImageGenerateStatusResponse)
    return {"id": str(sent.id_), "waiting": check.waiting, "done": deleted.done, "generations": len(deleted.generations)}


def status(apikey: str) -> dict[str, Any]:
    client = AIHordeAPIManualClient()
    heartbeat = ok(client.submit_request(AIHordeHeartbeatRequest(), AIHordeHeartbeatResponse), AIHordeHeartbeatResponse)
    models = ok(client.submit_request(HordeStatusModelsAllRequest(), HordeStatusModelsAllResponse),
                HordeStatusModelsAllResponse)
    performance = ok(client.submit_request(HordePerformanceRequest(), HordePerformanceResponse), HordePerformanceResponse)
    return {"message": heartbeat.message, "models": [m.name for m in models.root],
            "queued": performance.queued_requests}


def work(apikey: str) -> dict[str, Any]:
    """A Horde worker's round: pop until a job comes, draw its images, upload, submit."""
    from PIL import Image
    import requests

    client = AIHordeAPIManualClient()
    pop_request = ImageGenerateJobPopRequest(apikey=apikey, name="sdk-worker", models=[], bridge_agent="test:1:sdk",
                                             max_pixels=512 * 512, nsfw=True, amount=1)
    deadline = time.monotonic() + 60
    while True:
        popped = ok(client.submit_request(pop_request, ImageGenerateJobPopResponse), ImageGenerateJobPopResponse)
        if popped.ids:
            break
        assert time.monotonic() < deadline, "no job was popped"
        time.sleep(0.2)
    payload = popped.payload
    assert popped.r2_uploads is not None and len(popped.r2_uploads) == len(popped.ids)
    rewards = []
    for index, (gen_id, upload) in enumerate(zip(popped.ids, popped.r2_uploads, strict=True)):
        # A stand-in for the worker's own generation: right size, WebP, as reGen uploads.
        picture = Image.new("RGB", (payload.width, payload.height), (40 * index, 90, 160))
        buffer = io.BytesIO()
        picture.save(buffer, format="WEBP", quality=95)
        put = requests.put(upload, data=buffer.getvalue(), headers={"Content-Type": "image/webp"}, timeout=30)
        put.raise_for_status()
        submitted = ok(client.submit_request(
            ImageGenerationJobSubmitRequest(apikey=apikey, id=gen_id, generation="R2", state="ok",
                                            seed=int(payload.seed or 0) + index),
            JobSubmitResponse,
        ), JobSubmitResponse)
        rewards.append(submitted.reward)
    return {"ids": [str(i) for i in popped.ids], "model": popped.model, "seed": payload.seed,
            "size": [payload.width, payload.height], "prompt": payload.prompt, "rewards": rewards}


SCENARIOS = {"generate": generate, "inline": inline, "cancel": cancel, "status": status, "work": work}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](sys.argv[2])))
