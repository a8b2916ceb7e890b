"""Image to image and inpainting from the page: a picture from the file input (or dropped),
a mask painted with the mouse, the keyboard or a finger, and what the page sends for them."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import expect

from tests.web.pages import choose_picture, drag_on_mask, fill, gallery_card, stable_box, stored_key, unique


def picture(path: Path, size: tuple[int, int]) -> Path:
    """A PNG with a left-to-right gradient (so resizing it is visible)."""
    image = Image.new("RGB", size)
    image.putdata([(x * 255 // size[0], 120, 200 - y) for y in range(size[1]) for x in range(size[0])])
    image.save(path)
    return path


def sent_jobs(page: Any) -> list[dict[str, Any]]:
    """The bodies of the jobs this page submits, as they leave the browser."""
    sent: list[dict[str, Any]] = []
    page.on("request", lambda r: sent.append(r.post_data_json)
            if r.method == "POST" and r.url.endswith("/api/v1/jobs") else None)
    return sent


def mask_of(body: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["mask"])))


def submit(page: Any) -> dict[str, Any]:
    """Press Generate; the job as the server answered it."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/api/v1/jobs")) as answer:
        page.get_by_role("button", name="Generate").click()
    assert answer.value.ok, answer.value.text()
    return answer.value.json()


def test_img2img_from_an_uploaded_picture(web_server, open_page, tmp_path) -> None:
    page = open_page(web_server)
    sent = sent_jobs(page)
    source = picture(tmp_path / "start.png", (100, 70))
    choose_picture(page, source)
    # The output size follows the picture, rounded down to a multiple of 8.
    expect(page.locator("#width")).to_have_value("96")
    expect(page.locator("#height")).to_have_value("64")
    expect(page.get_by_label("Denoising strength", exact=False).first).to_have_value("0.75")
    page.locator("#img2img-strength").fill("0.4")
    expect(page.locator("#img2img-strength-value")).to_have_text("0.4")
    page.get_by_label("Resize mode").select_option(label="Crop and resize")
    prompt = unique("a fox from a picture")
    fill(page, prompt=prompt, steps=4)  # 2 steps at strength 0.4 would leave none to run
    job = submit(page)

    body = sent[-1]
    assert body["init_images"] == [base64.b64encode(source.read_bytes()).decode("ascii")]
    assert body["denoising_strength"] == 0.4 and body["resize_mode"] == 1
    assert "mask" not in body
    expect(gallery_card(page, prompt)).to_have_count(1)
    key, _ = stored_key(page)
    with web_server.client(key) as client:
        stored = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert stored["state"] == "succeeded"
    assert len(stored["request"]["init_images"]) == 1 and stored["request"]["denoising_strength"] == 0.4
    assert (stored["request"]["width"], stored["request"]["height"]) == (96, 64)
    page.locator("#generate-form").screenshot(path=str(tmp_path / "web-img2img.png"))

    # The picture's strength is not remembered as the hires fix's.
    assert page.evaluate("JSON.parse(localStorage.getItem('kakumei.lastRequest'))")["denoising_strength"] != 0.4

    # Clearing the picture goes back to text to image.
    page.get_by_role("button", name="Clear picture (back to text to image)").click()
    expect(page.locator("#init-part")).to_be_hidden()
    submit(page)
    assert "mask" not in sent[-1] and not sent[-1].get("init_images")


def test_inpainting_with_a_mask_painted_by_mouse(web_server, open_page, tmp_path) -> None:
    page = open_page(web_server)
    sent = sent_jobs(page)
    choose_picture(page, picture(tmp_path / "start.png", (128, 64)))
    page.locator("#brush-size").fill("16")
    drag_on_mask(page, (0.1, 0.5), (0.4, 0.5))  # a stroke across the left half, at mid-height
    fill(page, mask_blur=2, inpainting_fill=2, inpaint_full_res=True)
    prompt = unique("a fox painted in")
    fill(page, prompt=prompt, steps=2)
    job = submit(page)

    body = sent[-1]
    mask = mask_of(body).convert("RGB")
    assert mask.size == (128, 64)
    assert {value for band in mask.getextrema() for value in band} == {0, 255}  # black and white only
    assert mask.getpixel((32, 32)) == (255, 255, 255)  # painted
    assert mask.getpixel((32, 4)) == (0, 0, 0)  # above the stroke
    assert mask.getpixel((110, 32)) == (0, 0, 0)  # the right half was not touched
    assert (body["mask_blur"], body["inpainting_fill"], body["inpaint_full_res"]) == (2, 2, True)
    expect(gallery_card(page, prompt)).to_have_count(1)
    key, _ = stored_key(page)
    with web_server.client(key) as client:
        stored = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert stored["state"] == "succeeded" and stored["request"]["mask"]
    page.locator("#generate-form").screenshot(path=str(tmp_path / "web-inpainting.png"))


def test_mask_by_keyboard_invert_and_clear(web_server, open_page, tmp_path) -> None:
    page = open_page(web_server)
    sent = sent_jobs(page)
    choose_picture(page, picture(tmp_path / "start.png", (64, 64)))
    page.locator("#brush-size").fill("8")
    canvas = page.get_by_role("img", name="Mask: paint where the picture is repainted")
    canvas.focus()
    page.keyboard.press("Space")  # a dot at the centre
    for _ in range(3):
        page.keyboard.press("Shift+ArrowRight")  # a line to the right of it
    page.get_by_role("button", name="Invert mask").click()
    # A refused value is marked at its own field, with the API's sentence below it.
    fill(page, prompt=unique("keyboard mask"), steps=2, mask_blur=99)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#mask_blur-error")).to_contain_text("mask_blur")
    expect(page.locator("#mask_blur")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#mask_blur")).to_be_focused()
    fill(page, mask_blur=4)
    submit(page)
    expect(page.locator(".field-error")).to_have_count(0)
    mask = mask_of(sent[-1]).convert("L")
    assert mask.getpixel((32, 32)) == 0 and mask.getpixel((44, 32)) == 0  # painted, then inverted
    assert mask.getpixel((4, 4)) == 255 and mask.getpixel((32, 56)) == 255

    page.get_by_role("button", name="Clear mask").click()
    submit(page)
    assert "mask" not in sent[-1] and sent[-1]["init_images"]  # img2img without a mask


def test_mask_by_touch(web_server, open_page, tmp_path) -> None:
    page = open_page(web_server, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    sent = sent_jobs(page)
    choose_picture(page, picture(tmp_path / "start.png", (64, 64)))
    mask = page.get_by_role("img", name="Mask: paint where the picture is repainted")
    box = stable_box(mask)
    # A tap through the element waits for it to be still and hit by events, as a finger would.
    mask.tap(position={"x": box["width"] * 0.25, "y": box["height"] * 0.25})
    fill(page, prompt=unique("touch mask"), steps=2)
    page.get_by_role("button", name="Generate").tap()
    expect(page.locator("#status")).to_contain_text("Queued")
    mask = mask_of(sent[-1]).convert("L")
    assert mask.getpixel((16, 16)) == 255 and mask.getpixel((48, 48)) == 0


def test_a_dropped_picture_of_another_type_goes_as_png(web_server, open_page, tmp_path) -> None:
    page = open_page(web_server)
    sent = sent_jobs(page)
    gif = io.BytesIO()
    Image.new("RGB", (72, 80), (20, 160, 90)).save(gif, format="GIF")
    # What a drop from the file manager hands the page: a DataTransfer with the file.
    drop = page.evaluate_handle(
        """b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const t = new DataTransfer();
                    t.items.add(new File([bytes], 'dropped.gif', { type: 'image/gif' }));
                    return t; }""",
        base64.b64encode(gif.getvalue()).decode("ascii"),
    )
    page.dispatch_event("#init-drop", "drop", {"dataTransfer": drop})
    expect(page.get_by_role("img", name="The picture to start from")).to_be_visible()
    expect(page.locator("#width")).to_have_value("72")
    expect(page.locator("#height")).to_have_value("80")
    fill(page, prompt=unique("dropped"), steps=4)
    submit(page)
    sent_picture = Image.open(io.BytesIO(base64.b64decode(sent[-1]["init_images"][0])))
    assert sent_picture.format == "PNG" and sent_picture.size == (72, 80)
    assert sent_picture.convert("RGB").getpixel((10, 10)) == (20, 160, 90)
