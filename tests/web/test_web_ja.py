"""The page in Japanese and English, and a Japanese prompt generated from it with the English
it was encoded as shown before and after (real `kakumei serve`, tiny model, Chromium)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from playwright.sync_api import expect

from tests.web.pages import fill, gallery_card, reload
from tools.i18n_strings import all_strings

SMALL = {"steps": 2, "width": 64, "height": 64}
JA = {"extra_http_headers": {"Accept-Language": "ja-JP,ja;q=0.9,en;q=0.5"}, "locale": "ja-JP"}
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WEB = Path(__file__).resolve().parents[2] / "src" / "kakumei" / "web"


def test_every_string_has_each_language() -> None:
    strings = all_strings()
    assert len(strings) > 100
    for path in sorted((WEB / "i18n").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        have = data["strings"]
        assert [s for s in strings if not have.get(s)] == [], path.name
        assert [s for s in have if s not in strings] == [], f"{path.name} holds strings the page no longer has"
        for english, translated in have.items():  # the same {placeholders} in every language
            assert sorted(_placeholders(english)) == sorted(_placeholders(translated)), (path.name, english)


def _placeholders(text: str) -> list[str]:
    import re

    return re.findall(r"\{\w+\}", text)


def _keep(shot: Path, name: str) -> None:
    DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, DOCS_SHOTS / name)


def test_the_page_in_japanese_from_accept_language(web_server, open_page, screenshot) -> None:
    page = open_page(web_server, **JA)
    assert page.evaluate("document.documentElement.lang") == "ja"
    expect(page.get_by_role("button", name="生成")).to_be_visible()
    expect(page.get_by_label("プロンプト", exact=True)).to_be_visible()
    expect(page.locator("#gallery-title")).to_have_text("マイ画像")
    expect(page.locator("#lang")).to_have_value("ja")
    expect(page.locator("#prompt")).to_have_attribute("placeholder", "雪の中の赤い狐、水彩画")
    # The server's sentences the page shows, in Japanese too.
    expect(page.locator("#me-group")).to_contain_text("分け合っています")
    # Nothing of the English page is left where a Japanese string exists.
    expect(page.locator("body")).not_to_contain_text("Negative prompt")
    expect(page.locator("body")).not_to_contain_text("My images")
    _keep(screenshot(page, "web-ja"), "web-ja.png")


def test_the_switch_is_remembered(web_server, open_page, screenshot) -> None:
    page = open_page(web_server, extra_http_headers={"Accept-Language": "en-US,en;q=0.9"})
    expect(page.get_by_role("button", name="Generate")).to_be_visible()
    _keep(screenshot(page, "web-en"), "web-en.png")
    page.locator("#prompt").fill("typed before the switch")
    with page.expect_navigation():
        page.locator("#lang").select_option("ja")
    page.locator("body[data-ready='true']").wait_for(state="attached")
    expect(page.get_by_role("button", name="生成")).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("typed before the switch")
    reload(page)  # remembered over Accept-Language, which still asks for English
    expect(page.get_by_role("button", name="生成")).to_be_visible()
    assert page.evaluate("localStorage.getItem('kakumei.lang')") == "ja"
    with page.expect_navigation():
        page.locator("#lang").select_option("en")
    page.locator("body[data-ready='true']").wait_for(state="attached")
    expect(page.get_by_role("button", name="Generate")).to_be_visible()


def test_refusals_and_numbers_in_japanese(web_server, open_page) -> None:
    page = open_page(web_server, **JA)
    fill(page, prompt="赤い狐", steps=2, width=4096, height=64)
    page.get_by_role("button", name="生成").click()
    expect(page.locator("#width-error")).to_have_text("width は 64〜2048 ピクセルにしてください（指定値 4096）")
    expect(page.locator("#form-error")).to_contain_text("64〜2048 ピクセルにしてください")
    # Dates and numbers as Japanese writes them (a key's date, the durations of an ETA).
    assert page.evaluate("SAY.keyMade(new Date(2026, 11, 1).toLocaleDateString(LANG))") == "2026/12/1 作成"
    assert page.evaluate("duration(120)") == "2 分"
    assert page.evaluate("plural(3, 'image')") == "3 枚"


def test_a_japanese_prompt_from_the_page(web_server, open_page, screenshot) -> None:
    page = open_page(web_server, **JA)
    prompt = "(赤い狐:1.3), 雪の森, ｶﾞﾝﾀﾞﾑ"
    fill(page, prompt=prompt, negative_prompt="低品質", seed=77, **SMALL)
    # Before generating: the English under the prompt, and the word no dictionary knew.
    english = page.locator("#prompt_english")
    expect(english).to_be_visible()
    expect(english).to_have_value("(red fox:1.3), snow forest, ガンダム")
    expect(page.locator("#negative_prompt_english")).to_have_value("low quality")
    expect(page.locator("#translation-note")).to_have_text("辞書にない語（そのまま送ります）：ガンダム")
    # The user edits the English; that is what is encoded.
    english.fill("(red fox:1.3), snowy forest, robot")
    _keep(screenshot(page, "web-ja-prompt"), "web-ja-prompt.png")
    page.get_by_role("button", name="生成").click()

    card = gallery_card(page, prompt)
    expect(card).to_have_count(1)
    expect(card.locator(".image-prompt")).to_have_text(prompt)
    expect(card.locator(".image-english")).to_have_text("英語：(red fox:1.3), snowy forest, robot")
    card.locator(".image-recipe > summary").click()
    expect(card.locator(".image-infotext")).to_contain_text("(red fox:1.3), snowy forest, robot\nNegative prompt: low quality")
    expect(card.locator(".image-summary")).to_contain_text("シード 77")

    # The job records both, as the API answers it.
    key = page.evaluate("localStorage.getItem('kakumei.apiKey')")
    with web_server.client(key) as client:
        items = client.get("/api/v1/images").json()["images"]
    recorded = next(i["request"] for i in items if i["request"].get("prompt_original") == prompt)
    assert recorded["prompt"] == "(red fox:1.3), snowy forest, robot"
    assert recorded["negative_prompt"] == "low quality"
    assert recorded["negative_prompt_original"] == "低品質"

    # Reusing the settings brings back the Japanese with the English as it was encoded.
    card.get_by_role("button", name="設定を再利用").click()
    expect(page.locator("#prompt")).to_have_value(prompt)
    expect(english).to_have_value("(red fox:1.3), snowy forest, robot")
