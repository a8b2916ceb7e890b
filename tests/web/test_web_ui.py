"""The web UI in headless Chromium against real `kakumei serve` processes (tiny model, SQLite).

Jobs on `web_server` run on its local worker. On `keyed_server` nothing runs a job until the
test itself claims it from the store, which makes "waiting", "running" and "failed"
deterministic without timing anything.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

from support import wait_done
from PIL import Image
from playwright.sync_api import expect

from kakumei.protocol import Progress
from kakumei.store.db import Database
from kakumei.store.images import ImageStore
from kakumei.store.jobs import JobStore
from tests.web.pages import fill, gallery_card, job_card, reload, stored_key, unique, use_key

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = {"steps": 2, "width": 64, "height": 64}


def test_generate_from_the_page_shows_the_image_and_its_recipe(web_server, open_page, screenshot) -> None:
    page = open_page(web_server)
    expect(page.get_by_text("Ctrl+Enter")).to_be_visible()
    prompt = unique("a red fox in snow")
    fill(page, prompt=prompt, negative_prompt="blurry", seed=1234, cfg_scale=6.5,
         sampler_name="Euler", scheduler="Karras", **SMALL)
    page.get_by_role("button", name="Generate").click()

    card = gallery_card(page, prompt)
    expect(card).to_have_count(1)
    image = card.locator("img")
    expect(image).to_have_attribute("alt", prompt)
    expect(image).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function("img => img.complete && img.naturalWidth === 64", arg=image.element_handle())
    expect(card.locator(".image-summary")).to_contain_text("seed 1234 · 2 steps · Euler · Karras · CFG 6.5 · 64×64")

    card.get_by_text("Recipe").click()
    recipe = card.locator(".image-infotext")
    expect(recipe).to_be_visible()
    for part in (prompt, "Negative prompt: blurry", "Steps: 2", "Sampler: Euler", "Schedule type: Karras",
                 "CFG scale: 6.5", "Seed: 1234", "Size: 64x64", "Model: "):
        expect(recipe).to_contain_text(part)

    with page.expect_download() as download:
        card.get_by_role("link", name="Download").click()
    assert download.value.suggested_filename == "kakumei-1234.png"
    png = Path(download.value.path()).read_bytes()
    assert png.startswith(PNG_SIGNATURE) and b"Seed: 1234" in png

    expect(page.locator("#jobs-section")).to_be_hidden()  # finished jobs leave "In progress"
    expect(page.locator("#status")).to_have_text("Finished: 1 image.")
    expect(page.locator("#me-notes")).to_contain_text("of the machine is yours")  # in words...
    expect(page.locator("#me dd[data-field=weight]")).to_be_hidden()
    page.get_by_text("The numbers").click()  # ...and the figures on request
    expect(page.locator("#me dd[data-field=share]")).to_contain_text("%")
    screenshot(page, "web-desktop")


def test_invalid_size_shows_the_api_sentence(web_server, open_page) -> None:
    page = open_page(web_server)
    fill(page, prompt=unique("too odd"), steps=2, width=65, height=64)
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#form-error")
    expect(error).to_have_text("width must be a multiple of 8 (e.g. 64), got 65")
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#width")).to_be_focused()
    # The field's own message sits below it, and is read out with it.
    expect(page.locator("#width-error")).to_have_text("width must be a multiple of 8 (e.g. 64), got 65")
    expect(page.locator("#width")).to_have_accessible_description("width must be a multiple of 8 (e.g. 64), got 65")

    fill(page, width=64, height=4096)
    page.get_by_role("button", name="Generate").click()
    expect(error).to_have_text("height must be between 64 and 2048 pixels, got 4096")
    expect(page.locator("#height")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#width")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#width-error")).to_have_count(0)
    expect(page.locator(".field-error")).to_have_count(1)

    fill(page, height="")  # an empty field is the user's to fill, not the form's to guess
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#height-error")).to_have_text("height must be a whole number")
    expect(page.locator("#height")).to_be_focused()
    expect(page.locator("#jobs > li")).to_have_count(0)


def test_reuse_settings_and_same_seed_new_prompt(web_server, open_page) -> None:
    prompt = unique("a lighthouse at dusk")
    request = {"prompt": prompt, "negative_prompt": "ugly", "steps": 3, "cfg_scale": 5.5, "width": 64,
               "height": 72, "seed": 4242, "sampler_name": "DPM++ 2M", "scheduler": "Karras",
               "batch_size": 2, "clip_skip": 2}
    page = open_page(web_server)
    with web_server.client(stored_key(page)[0]) as client:  # as this browser's guest
        job = wait_done(client, client.post("/api/v1/jobs", json=request).json()["id"])
    assert job["state"] == "succeeded", job
    reload(page)
    second = gallery_card(page, prompt).nth(1)  # image 1 of the batch: seed 4243
    expect(second.locator(".image-summary")).to_contain_text("seed 4243")
    second.get_by_role("button", name="Reuse settings").click()
    expected = {**request, "seed": 4243}
    for name, value in expected.items():
        expect(page.locator(f"#{name}")).to_have_value(str(value))
    expect(page.locator("#advanced")).to_have_attribute("open", "")  # clip skip 2 lives there
    expect(page.locator("#prompt")).to_be_focused()

    second.get_by_role("button", name="Same seed, new prompt").click()
    expect(page.locator("#prompt")).to_have_value("")
    expect(page.locator("#prompt")).to_be_focused()
    expect(page.locator("#seed")).to_have_value("4243")
    new_prompt = unique("a harbour at dawn")
    page.keyboard.type(new_prompt)
    fill(page, batch_size=1)
    page.keyboard.press("Control+Enter")

    card = gallery_card(page, new_prompt)
    expect(card).to_have_count(1)
    card.get_by_text("Recipe").click()
    for part in ("Seed: 4243", "Size: 64x72", "Steps: 3", "Sampler: DPM++ 2M", "Negative prompt: ugly"):
        expect(card.locator(".image-infotext")).to_contain_text(part)


def test_keyboard_only_generate(web_server, open_page) -> None:
    page = open_page(web_server)
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_be_focused()
    prompt = unique("typed without a mouse")
    page.keyboard.type(prompt)

    # The focus order follows the form as it reads; numbers are typed over.
    values = {"steps": "2", "width": "64", "height": "64", "seed": "77"}
    # "Start from a picture" (image to image) comes after the prompts.
    for expected in ("negative_prompt", "init-file", "model", "sampler_name", "scheduler", "steps", "cfg_scale",
                     "width", "height", "seed", "seed-random", "batch_size"):
        page.keyboard.press("Tab")
        expect(page.locator(f"#{expected}")).to_be_focused()
        if expected in values:
            page.keyboard.press("Control+a")
            page.keyboard.type(values[expected])
    page.keyboard.press("Tab")
    expect(page.locator("#advanced > summary")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#generate")).to_be_focused()

    page.keyboard.press("Control+Enter")
    card = gallery_card(page, prompt)
    expect(card).to_have_count(1)
    expect(card.locator(".image-summary")).to_contain_text("seed 77 · 2 steps")
    expect(page.locator("#status")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#status")).to_have_text("Finished: 1 image.")

    # On into the gallery: the new image comes first; its controls follow the form.
    expect(page.locator("#generate")).to_be_focused()
    fill(page, prompt="something else")
    page.locator("#generate").focus()
    for control in (".image-open", ".image-recipe > summary", ".image-reuse"):
        page.keyboard.press("Tab")
        expect(card.locator(control)).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_have_value(prompt)
    expect(page.locator("#prompt")).to_be_focused()


def test_phone_sized_screen(web_server, open_page, screenshot) -> None:
    page = open_page(web_server, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                     is_mobile=True, has_touch=True)

    def fits() -> None:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px screen"

    fits()
    expect(page.get_by_text("Ctrl+Enter")).to_be_hidden()  # no keyboard to press it on
    for field in ("#prompt", "#steps", "#model"):
        # 16px or more, or phones zoom into the field on focus.
        assert page.locator(field).evaluate("e => parseFloat(getComputedStyle(e).fontSize)") >= 16
    prompt = unique("a fox on a phone")
    fill(page, prompt=prompt, **SMALL)
    page.get_by_role("button", name="Generate").tap()
    card = gallery_card(page, prompt)
    expect(card).to_have_count(1)
    box = card.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    fits()
    screenshot(page, "web-phone")


def test_a_pasted_key_shows_that_users_images(web_server, open_page) -> None:
    prompt = unique("someone else's fox")
    key = web_server.add_user()
    with web_server.client(key) as client:
        assert wait_done(client, client.post("/api/v1/jobs", json={"prompt": prompt, **SMALL}).json()["id"])["state"] == "succeeded"
    page = open_page(web_server)  # a guest: sees none of that user's images
    expect(page.locator("#gallery-empty")).to_be_visible()
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-name")).to_be_focused()
    page.get_by_text("Use an API key instead").click()
    use_key(page, key)
    expect(gallery_card(page, prompt)).to_have_count(1)
    assert stored_key(page) == (key, "key")


def test_delete_an_image(web_server, open_page) -> None:
    prompt = unique("to be deleted")
    page = open_page(web_server)
    key = stored_key(page)[0]
    with web_server.client(key) as client:
        job = wait_done(client, client.post("/api/v1/jobs", json={"prompt": prompt, **SMALL, "batch_size": 2}).json()["id"])
    reload(page)
    cards = gallery_card(page, prompt)
    expect(cards).to_have_count(2)
    page.on("dialog", lambda dialog: dialog.accept())
    cards.first.get_by_role("button", name="Delete").click()
    expect(cards).to_have_count(1)
    expect(page.locator("#status")).to_have_text("Image deleted.")
    with web_server.client(key) as client:
        assert client.get(job["images"][0]["url"]).status_code == 404
        assert client.get(job["images"][1]["url"]).status_code == 200


def job_store(server) -> tuple[JobStore, Database]:
    """The server's own queue, opened by the test so that it can play the worker."""
    db = Database(server.database_url)
    return JobStore(db, ImageStore(db, server.home / "images")), db


def preview_png(color: tuple[int, int, int] = (200, 40, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_sign_in_then_cancel_a_waiting_job(keyed_server, open_page) -> None:
    key = keyed_server.add_user()
    page = open_page(keyed_server)
    expect(page.locator("#signin-needed")).to_be_visible()  # this server needs a key: no guests
    expect(page.get_by_role("button", name="Sign up")).to_be_hidden()  # and no sign-up
    assert stored_key(page) == (None, None)
    page.get_by_role("textbox", name="API key").fill("not-a-key")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#signin-error")).to_have_text("unknown API key")
    expect(page.get_by_role("textbox", name="API key")).to_have_attribute("aria-invalid", "true")
    use_key(page, key)
    expect(page.locator("#prompt")).to_be_focused()

    prompt = unique("waiting in line")
    fill(page, prompt=prompt, **SMALL)
    page.get_by_role("button", name="Generate").click()
    card = job_card(page, prompt)
    expect(card.locator(".job-state")).to_have_text("Queued: next in line.")
    expect(card.locator(".job-detail")).to_contain_text("Ready in about")
    card.get_by_role("button", name="Cancel").click()
    expect(card.locator(".job-state")).to_have_text("Cancelled.")
    expect(card.get_by_role("button", name="Dismiss")).to_be_focused()
    with keyed_server.client(key) as client:
        assert [j["state"] for j in client.get("/api/v1/jobs").json()["jobs"]] == ["cancelled"]

    reload(page)  # the key is remembered by this browser
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#who")).to_have_text("anonymous")
    expect(page.locator("#signin-needed")).to_be_visible()
    with keyed_server.client(key) as client:  # a pasted key is forgotten here, not revoked
        assert client.get("/api/v1/jobs").status_code == 200


def test_progress_preview_cancel_while_running_and_failure(keyed_server, open_page) -> None:
    key = keyed_server.add_user()
    page = open_page(keyed_server)
    use_key(page, key)
    store, db = job_store(keyed_server)
    try:
        running = unique("running")
        fill(page, prompt=running, **SMALL)
        page.keyboard.press("Control+Enter")
        card = job_card(page, running)
        expect(card.locator(".job-state")).to_have_text("Queued: next in line.")

        lease = store.claim("web-test-worker")
        assert lease is not None and lease.job.request.prompt == running
        # A first frame that is a black square is not shown: the placeholder stays.
        store.heartbeat(lease.job.id, lease.lease_id, Progress(step=1, total=4, preview=preview_png((0, 0, 0))))
        expect(card.locator(".job-detail")).to_have_text("Step 1 of 4")
        expect(card.locator(".job-placeholder")).to_be_visible()
        page.wait_for_timeout(300)  # time to decode the frame it must not show
        expect(card.locator(".job-preview")).to_be_hidden()
        preview = preview_png()
        store.heartbeat(lease.job.id, lease.lease_id, Progress(step=1, total=4, preview=preview))
        expect(card.locator(".job-state")).to_have_text("Generating…")
        assert card.locator(".job-progress").evaluate("e => [e.value, e.max]") == [1, 4]
        expect(card.locator(".job-preview")).to_be_visible()
        expect(card.locator(".job-preview")).to_have_attribute("src", preview)
        expect(card.locator(".job-placeholder")).to_be_hidden()

        card.get_by_role("button", name="Cancel").focus()
        page.keyboard.press("Enter")
        expect(card.locator(".job-state")).to_have_text("Cancelling…")
        expect(card.get_by_role("button", name="Cancel")).to_be_focused()
        assert store.heartbeat(lease.job.id, lease.lease_id, Progress(step=2, total=4)).cancel_requested
        store.acknowledge_cancel(lease.job.id, lease.lease_id)
        expect(card.locator(".job-state")).to_have_text("Cancelled.")
        expect(card.get_by_role("button", name="Dismiss")).to_be_focused()

        failing = unique("failing")
        fill(page, prompt=failing)
        page.get_by_role("button", name="Generate").click()
        failed_card = job_card(page, failing)
        expect(failed_card.locator(".job-state")).to_have_text("Queued: next in line.")
        lease = store.claim("web-test-worker")
        assert lease is not None and lease.job.request.prompt == failing
        store.fail(lease.job.id, lease.lease_id, "the worker ran out of memory")
        expect(failed_card.locator(".job-state")).to_have_text("Failed: the worker ran out of memory")
        failed_card.get_by_role("button", name="Dismiss").focus()
        page.keyboard.press("Enter")
        expect(failed_card).to_have_count(0)
    finally:
        db.close()


def test_account_in_words_and_terms_when_the_server_has_them(web_server, open_page) -> None:
    """The account panel and the terms, with /api/v1/me played by the browser (page.route) so
    that the page is shown an account with credits and a network group, that needs the terms
    accepted, is on the free tier and is timed out, whatever the server under test has."""
    sentence = "You share this server's free time with 3 other people on your network 203.0.113.0/24."
    me: dict[str, Any] = {
        "name": "alice", "anonymous": False, "balance": 12.5, "weight": 2, "share": 0.25, "weight_source": "merit",
        "virtual_counter": 7, "free_tier": True,
        "limits": {"free_caps": {"max_pixels": 262144, "max_steps": 30, "max_images": 2}},
        "standing": {"allowed": False, "reason": "too many refused requests; try again in 60 s"},
        "terms": {"required": True, "accepted": False, "version": "1",
                  "text": "CreativeML OpenRAIL-M: you are responsible for what you make."},
        "group": {"kind": "network", "network": "203.0.113.0/24", "others": 3, "sentence": sentence},
    }
    accepted: list[Any] = []

    def serve_me(route: Any) -> None:
        if route.request.method == "POST":
            accepted.append(route.request.post_data_json)
            me["terms"] = {**me["terms"], "accepted": True}
        route.fulfill(json=me)

    key = web_server.add_user()

    def setup(context: Any) -> None:
        context.route(re.compile(r".*/api/v1/me(/terms)?$"), serve_me)
        # Signed in with a pasted key already: figures of an account, not of a guest.
        context.add_init_script(f"localStorage.setItem('kakumei.apiKey', {key!r});"
                                "localStorage.setItem('kakumei.keyKind', 'key');")

    page = open_page(web_server, setup=setup)
    expect(page.locator("#me")).to_be_visible()
    expect(page.locator("#who")).to_have_text("alice")
    expect(page.locator("#me-group")).to_have_text(sentence)
    expect(page.locator("#me-balance")).to_have_text("You have 12.5 credits, earned by running a worker and spent as you generate.")
    expect(page.locator("#me-notes")).to_have_text(
        "While you have images waiting, about 25 % of the machine is yours. "
        "Your share grows with what your workers contribute. "
        "Free tier for now: up to 262,144 pixels, 30 steps and 2 images per job.")
    expect(page.locator("#me-standing")).to_have_text("too many refused requests; try again in 60 s")
    for jargon in ("Weight", "Usage counter", "virtual"):
        assert jargon not in page.locator("#me").inner_text()  # until the numbers are asked for
    page.get_by_text("The numbers").click()
    expect(page.locator("#me dd[data-field=balance]")).to_have_text("12.5")
    expect(page.locator("#me dd[data-field=weight]")).to_have_text("2")
    expect(page.locator("#me dd[data-field=share]")).to_have_text("25 %")
    expect(page.locator("#me dd[data-field=network]")).to_have_text("203.0.113.0/24")
    expect(page.locator("#terms")).to_be_visible()
    expect(page.locator("#terms-text")).to_contain_text("OpenRAIL-M")
    page.get_by_role("button", name="I accept these terms").click()
    expect(page.locator("#terms")).to_be_hidden()
    assert accepted == [{"accepted": True, "version": "1"}]


def test_many_waiting_jobs_leave_the_page_responsive(keyed_server, open_page) -> None:
    """Each event stream holds one of the browser's six connections to the server: with
    more jobs than that waiting, the page must still submit, answer and cancel."""
    key = keyed_server.add_user()
    page = open_page(keyed_server)
    use_key(page, key)
    try:
        fill(page, **SMALL)
        prompts = [unique(f"waiting {i}") for i in range(8)]
        for prompt in prompts:
            fill(page, prompt=prompt)
            page.keyboard.press("Control+Enter")
            expect(job_card(page, prompt).locator(".job-state")).to_contain_text("Queued")
        fill(page, prompt=unique("odd size"), width=60)
        page.keyboard.press("Control+Enter")
        expect(page.locator("#form-error")).to_have_text("width must be a multiple of 8 (e.g. 64), got 60")
        last = job_card(page, prompts[-1])
        last.get_by_role("button", name="Cancel").click()
        expect(last.locator(".job-state")).to_have_text("Cancelled.")
    finally:
        # Leave the queue empty for the other tests on this server, which claim "the next job".
        with keyed_server.client(key) as client:
            for job in client.get("/api/v1/jobs").json()["jobs"]:
                client.delete(f"/api/v1/jobs/{job['id']}")
