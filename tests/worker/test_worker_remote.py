"""HttpJobSource when the server is away: claims back off and resume, results are retried."""

from __future__ import annotations

import httpx

from kakumei.protocol import Capabilities, ImageReport
from kakumei.worker.remote import FIRST_BACKOFF, MAX_BACKOFF, HttpJobSource


def flaky(failures: int, answer: httpx.Response) -> tuple[httpx.MockTransport, list[str]]:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if len(seen) <= failures:
            raise httpx.ConnectError("connection refused", request=request)
        return answer

    return httpx.MockTransport(handle), seen


def test_claims_back_off_while_the_server_is_away_and_resume() -> None:
    transport, seen = flaky(8, httpx.Response(204))
    slept: list[float] = []
    source = HttpJobSource("http://server", "kkw_x", transport=transport, sleep=slept.append)
    results = [source.claim("w", Capabilities()) for _ in range(9)]
    assert results == [None] * 9 and len(seen) == 9
    assert slept[0] == FIRST_BACKOFF and slept == sorted(slept) and max(slept) == MAX_BACKOFF
    assert source.backoff == 0.0  # the server answered: no more waiting


def test_a_result_is_retried_until_the_server_takes_it() -> None:
    transport, seen = flaky(3, httpx.Response(200, json={"ok": True}))
    slept: list[float] = []
    source = HttpJobSource("http://server", "kkw_x", transport=transport, sleep=slept.append)
    image = ImageReport.of_png(b"\x89PNG", seed=1, index=0)
    assert source.complete("job", "lease", [image], 1)
    assert seen == ["/api/v1/worker/jobs/job/complete"] * 4 and slept == [1.0, 2.0, 4.0]


def test_a_refused_result_is_reported_as_not_kept() -> None:
    transport, _ = flaky(0, httpx.Response(409, json={"detail": "no longer leased"}))
    source = HttpJobSource("http://server", "kkw_x", transport=transport, sleep=lambda s: None)
    assert not source.complete("job", "lease", [], 1)
    assert not source.heartbeat("job", "lease").ok
