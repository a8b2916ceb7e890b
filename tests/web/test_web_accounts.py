"""People, not keys, in the browser: the guest key a first visit takes, sign-up that keeps a
guest's images, sign-in and sign-out, and the API keys of an account, against a real
`kakumei serve` with open sign-up (`web_server`)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from playwright.sync_api import expect
from support import wait_done

from tests.web.pages import (
    STRONG_PASSWORD,
    fill,
    gallery_card,
    reload,
    sign_in_form,
    sign_up_form,
    stored_key,
    unique,
)

SMALL = {"steps": 2, "width": 64, "height": 64}


def new_name() -> str:
    return f"web-{uuid.uuid4().hex[:8]}"


def make_image(server: Any, key: str | None, prompt: str) -> None:
    with server.client(key) as client:
        job = wait_done(client, client.post("/api/v1/jobs", json={"prompt": prompt, **SMALL}).json()["id"])
    assert job["state"] == "succeeded", job


def test_each_browser_is_its_own_guest_kept_across_reload(web_server, open_page) -> None:
    page = open_page(web_server)
    key, kind = stored_key(page)
    assert key and kind == "guest"
    expect(page.locator("#who")).to_have_text("guest")
    expect(page.get_by_role("button", name="Sign up")).to_be_visible()
    prompt = unique("a guest's fox")
    fill(page, prompt=prompt, **SMALL)
    page.get_by_role("button", name="Generate").click()
    expect(gallery_card(page, prompt)).to_have_count(1)

    reload(page)
    assert stored_key(page) == (key, "guest")
    expect(gallery_card(page, prompt)).to_have_count(1)

    other = open_page(web_server)  # another browser on the same network: another guest
    other_key, _ = stored_key(other)
    assert other_key and other_key != key
    expect(other.locator("#gallery-empty")).to_be_visible()
    expect(gallery_card(other, prompt)).to_have_count(0)
    with web_server.client(key) as mine, web_server.client(other_key) as theirs:
        url = mine.get("/api/v1/images").json()["images"][0]["url"]
        assert mine.get(url).status_code == 200 and theirs.get(url).status_code == 404


def test_without_a_guest_key_the_page_works_keyless(web_server, open_page) -> None:
    """Too many guests from this network (429): where anonymous use is on, the page goes on
    without a key, and says nothing about it."""

    def setup(context: Any) -> None:
        context.route(re.compile(r".*/api/v1/guests$"), lambda route: route.fulfill(
            status=429, headers={"Retry-After": "600"}, json={"detail": "too many guests from your network; try again in 10 min"}))

    page = open_page(web_server, setup=setup)
    assert stored_key(page) == (None, None)
    expect(page.locator("#who")).to_have_text("anonymous")
    expect(page.locator("#signin")).to_be_hidden()
    for error in ("#form-error", "#gallery-error", "#signin-error"):
        expect(page.locator(error)).to_be_empty()
    prompt = unique("keyless")
    fill(page, prompt=prompt, **SMALL)
    page.get_by_role("button", name="Generate").click()
    expect(gallery_card(page, prompt)).to_have_count(1)


def test_sign_up_keeps_the_guests_images_then_sign_out_and_in(web_server, open_page) -> None:
    page = open_page(web_server)
    guest_key, _ = stored_key(page)
    prompt = unique("made as a guest")
    make_image(web_server, guest_key, prompt)
    reload(page)
    expect(gallery_card(page, prompt)).to_have_count(1)

    # A refusal is the server's sentence, next to the field it is about.
    name = new_name()
    with web_server.client() as client:
        weak = client.post("/api/v1/accounts", json={"name": new_name(), "password": "short"})
    assert weak.status_code == 422, weak.text
    sign_up_form(page, name, "short")
    expect(page.locator("#signup-error")).to_have_text(weak.json()["detail"])
    expect(page.locator("#signup-password")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#signup-password")).to_be_focused()
    expect(page.locator("#signup-name")).not_to_have_attribute("aria-invalid", "true")

    sign_up_form(page, name, STRONG_PASSWORD)
    expect(page.locator("#who")).to_have_text(name)
    expect(page.locator("#signup")).to_be_hidden()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page.get_by_role("button", name="Sign up")).to_be_hidden()
    account_key, kind = stored_key(page)
    assert account_key and kind == "account"
    expect(gallery_card(page, prompt)).to_have_count(1)  # the guest's image is the account's now
    reload(page)
    expect(page.locator("#who")).to_have_text(name)
    expect(gallery_card(page, prompt)).to_have_count(1)
    with web_server.client(account_key) as client:
        me = client.get("/api/v1/me").json()
    assert me["name"] == name
    expect(page.locator("#me-group")).to_have_text(me["group"]["sentence"])

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#who")).to_have_text("guest")
    expect(page.locator("#gallery-empty")).to_be_visible()
    new_guest, kind = stored_key(page)
    assert new_guest not in (None, guest_key, account_key) and kind == "guest"
    with web_server.client(account_key) as client:  # signing out revoked this browser's key
        assert client.get("/api/v1/me").status_code == 401

    with web_server.client() as client:
        wrong = client.post("/api/v1/sessions", json={"name": name, "password": "not the password"})
    assert wrong.status_code == 401, wrong.text
    sign_in_form(page, name, "not the password")
    expect(page.locator("#login-error")).to_have_text(wrong.json()["detail"])
    expect(page.locator("#who")).to_have_text("guest")
    sign_in_form(page, name, STRONG_PASSWORD)
    expect(page.locator("#who")).to_have_text(name)
    expect(page.locator("#signin")).to_be_hidden()
    expect(gallery_card(page, prompt)).to_have_count(1)


def test_keys_of_an_account_mint_copy_revoke(web_server, open_page, screenshot) -> None:
    name = new_name()
    with web_server.client() as client:
        made = client.post("/api/v1/accounts", json={"name": name, "password": STRONG_PASSWORD})
        assert made.status_code == 201, made.text
        taken = client.post("/api/v1/accounts", json={"name": name, "password": STRONG_PASSWORD})
    assert taken.status_code == 409, taken.text
    page = open_page(web_server, permissions=["clipboard-read", "clipboard-write"])

    sign_up_form(page, name, STRONG_PASSWORD)  # the name is someone's already
    expect(page.locator("#signup-error")).to_have_text(taken.json()["detail"])
    expect(page.locator("#signup-name")).to_have_attribute("aria-invalid", "true")
    sign_in_form(page, name, STRONG_PASSWORD)
    expect(page.locator("#who")).to_have_text(name)

    page.get_by_text("API keys for programs").click()
    keys = page.locator("#keys-list > li")
    expect(keys).to_have_count(2)  # the one sign-up gave, and this browser's
    this_browser = keys.filter(has_text="(this browser)")
    expect(this_browser).to_have_count(1)
    expect(this_browser.get_by_role("button")).to_be_hidden()  # Sign out does that

    page.locator("#key-label").fill("my script")
    page.get_by_role("button", name="Create a key").click()
    expect(page.locator("#key-new")).to_be_visible()
    minted = page.locator("#key-new-value").inner_text()
    expect(keys).to_have_count(3)
    expect(page.locator("#key-copy")).to_be_focused()
    page.locator("#key-copy").click()
    expect(page.locator("#status")).to_have_text("Key copied.")
    screenshot(page, "web-account")
    assert page.evaluate("navigator.clipboard.readText()") == minted
    with web_server.client(minted) as client:
        assert client.get("/api/v1/me").json()["name"] == name

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke the key my script").click()
    expect(keys.filter(has_text="my script")).to_have_count(0)
    expect(keys).to_have_count(2)
    expect(page.locator("#status")).to_have_text("Key revoked.")
    with web_server.client(minted) as client:
        assert client.get("/api/v1/me").status_code == 401


def test_invite_code_field_only_in_invite_mode(web_server, open_page) -> None:
    """The server's options played in invite mode (page.route), and its refusal of the code:
    the field is shown, its code sent, and marked when the server turns it down."""
    sent: list[Any] = []

    def invite_mode(route: Any) -> None:
        options = route.fetch().json()
        route.fulfill(json={**options, "signup": "invite"})

    def refuse(route: Any) -> None:
        sent.append(json.loads(route.request.post_data))
        route.fulfill(status=403, json={"detail": "that invite code is unknown or used up; ask the operator for another"})

    page = open_page(web_server)
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("#signup-invite")).to_be_hidden()  # open sign-up asks for no code

    page.context.route(re.compile(r".*/api/v1/options$"), invite_mode)
    page.context.route(re.compile(r".*/api/v1/accounts$"), refuse)
    reload(page)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("textbox", name="Invite code")).to_be_visible()
    page.locator("#signup-invite").fill("abc123")
    sign_up_form(page, "someone", STRONG_PASSWORD)
    expect(page.locator("#signup-error")).to_have_text("that invite code is unknown or used up; ask the operator for another")
    expect(page.locator("#signup-invite")).to_have_attribute("aria-invalid", "true")
    assert sent == [{"name": "someone", "password": STRONG_PASSWORD, "invite": "abc123"}]
