"""What a user does on the page, as the web tests say it: fill the form, find a card, sign up,
sign in, and what this browser keeps."""

from __future__ import annotations

import re
import uuid
from typing import Any

from playwright.sync_api import expect

STRONG_PASSWORD = "correct horse battery staple"


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def wait_ready(page: Any) -> None:
    """Until the page has settled its key and drawn the account, gallery and jobs."""
    page.locator("body[data-ready='true']").wait_for(state="attached")


def reload(page: Any) -> None:
    page.reload()
    wait_ready(page)


def stored_key(page: Any) -> tuple[str | None, str | None]:
    """The key this browser keeps and what it is ("guest", "account" or "key")."""
    key, kind = page.evaluate("[localStorage.getItem('kakumei.apiKey'), localStorage.getItem('kakumei.keyKind')]")
    return key, kind


def fill(page: Any, **fields: Any) -> None:
    """Set form fields by their GenerationRequest names, as a user would."""
    for name, value in fields.items():
        field = page.locator(f"#{name}")
        if not field.is_visible():
            page.locator("#advanced > summary").click()
        tag = field.evaluate("e => e.tagName")
        if tag == "SELECT":
            field.select_option(str(value))
        elif field.get_attribute("type") == "checkbox":
            field.set_checked(bool(value))
        else:
            field.fill(str(value))


def gallery_card(page: Any, prompt: str) -> Any:
    return page.locator("#gallery > li", has_text=prompt)


def job_card(page: Any, prompt: str) -> Any:
    return page.locator("#jobs > li", has_text=prompt)


def use_key(page: Any, key: str) -> None:
    """Sign in by pasting an API key."""
    if not page.locator("#signin").is_visible():
        page.get_by_role("button", name="Sign in").click()
    if not page.get_by_role("textbox", name="API key").is_visible():
        page.get_by_text("Use an API key instead").click()
    page.get_by_role("textbox", name="API key").fill(key)
    page.get_by_role("button", name="Use this key").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page.locator("#signin")).to_be_hidden()


def sign_up_form(page: Any, name: str, password: str) -> None:
    """Open the sign-up form, fill it and send it (the caller checks what came of it)."""
    if not page.locator("#signup").is_visible():
        page.get_by_role("button", name="Sign up").click()
    page.locator("#signup-name").fill(name)
    page.locator("#signup-password").fill(password)
    page.get_by_role("button", name="Create account").click()


def sign_in_form(page: Any, name: str, password: str) -> None:
    """Open the sign-in form, fill it and send it (the caller checks what came of it)."""
    if not page.locator("#signin").is_visible():
        page.get_by_role("button", name="Sign in").click()
    page.locator("#login-name").fill(name)
    page.locator("#login-password").fill(password)
    page.locator("#login-form").get_by_role("button", name="Sign in").click()


def choose_picture(page: Any, path: Any) -> None:
    """Pick a picture to start from with the file input, and wait until its preview shows."""
    page.get_by_label("Start from a picture").set_input_files(str(path))
    page.wait_for_function("() => { const i = document.getElementById('init-preview'); "
                           "return i.complete && i.naturalWidth > 0; }")
    expect(page.get_by_role("img", name="The picture to start from")).to_be_visible()


def stable_box(element: Any) -> dict[str, float]:
    """The element's box once it is in view and has stopped moving: the page lays itself out
    again as a chosen picture's preview and the model list arrive, and raw mouse or touch
    coordinates taken before that land beside the element."""
    element.scroll_into_view_if_needed()
    element.hover(trial=True)  # waits until the element is visible, stable and hit by events
    box = element.bounding_box()
    assert box is not None
    return box


def drag_on_mask(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Paint on the mask with the mouse from `start` to `end`, as fractions of the canvas."""
    mask = page.get_by_role("img", name=re.compile("^Mask"))
    box = stable_box(mask)
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    for i in range(1, 6):
        t = i / 5
        page.mouse.move(box["x"] + (start[0] + (end[0] - start[0]) * t) * box["width"],
                        box["y"] + (start[1] + (end[1] - start[1]) * t) * box["height"])
    page.mouse.up()
