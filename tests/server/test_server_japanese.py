"""Japanese prompts through every API: translated at submit, the pair recorded on the job,
in the answers and in the PNG; `translate: false` sends them as written. Both databases."""

from __future__ import annotations

import base64
import json

from support import wait_done

from kakumei.engine.metadata import parse_infotext, read_metadata

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 7}
PROMPT = "(赤い狐:1.3), 雪の森, <lora:アニメ風:0.5>, ｶﾞﾝﾀﾞﾑ"
ENGLISH = "(red fox:1.3), snow forest, <lora:アニメ風:0.5>, ガンダム"


def _png_records(png: bytes) -> tuple[dict, dict]:
    meta = read_metadata(png)
    assert meta.parameters is not None and meta.kakumei is not None
    return parse_infotext(meta.parameters), meta.kakumei["request"]


def test_native_api_translates_and_records_both(live_server) -> None:
    _, key = live_server.services.users.add("hanako")
    with live_server.client(key) as client:
        # No LoRA file named so on this server: the tag is checked here without it.
        body = {**SMALL, "prompt": "(赤い狐:1.3), 雪の森, ｶﾞﾝﾀﾞﾑ", "negative_prompt": "低品質"}
        response = client.post("/api/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        job = response.json()
        request = job["request"]
        assert request["prompt"] == "(red fox:1.3), snow forest, ガンダム"
        assert request["prompt_original"] == "(赤い狐:1.3), 雪の森, ｶﾞﾝﾀﾞﾑ"
        assert (request["negative_prompt"], request["negative_prompt_original"]) == ("low quality", "低品質")
        assert request["untranslated"] == ["ガンダム"]
        assert job["notes"] == ["not in the dictionary, kept as written: ガンダム"]
        done = wait_done(client, job["id"])
        assert done["state"] == "succeeded", done
        png = client.get(done["images"][0]["url"]).content
        infotext, recorded = _png_records(png)
        # A1111 and sd-parsers read what was generated; kakumei's JSON has both.
        assert infotext["prompt"] == "(red fox:1.3), snow forest, ガンダム"
        assert infotext["negative_prompt"] == "low quality"
        assert recorded["prompt_original"] == "(赤い狐:1.3), 雪の森, ｶﾞﾝﾀﾞﾑ"
        assert recorded["negative_prompt_original"] == "低品質"
        # Retried with the same key: the same job, as the translation is the same.
        again = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
        replay = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
        assert replay.headers.get("Idempotent-Replayed") == "true" and replay.json()["id"] == again.json()["id"]


def test_translate_false_and_english_prompts_are_untouched(live_server) -> None:
    _, key = live_server.services.users.add("taro")
    with live_server.client(key) as client:
        off = client.post("/api/v1/jobs", json={**SMALL, "prompt": "赤い狐", "translate": False}).json()
        assert off["request"]["prompt"] == "赤い狐" and off["request"]["prompt_original"] is None
        english = client.post("/api/v1/jobs", json={**SMALL, "prompt": "a red fox"}).json()
        assert english["request"]["prompt"] == "a red fox" and english["notes"] == []
        png = client.get(wait_done(client, english["id"])["images"][0]["url"]).content
        # An English prompt's PNG records what it recorded before translation existed.
        assert not {"translate", "prompt_original", "negative_prompt_original", "untranslated"} & set(_png_records(png)[1])
        # English the page's user edited, sent with the original: kept as sent.
        edited = client.post("/api/v1/jobs", json={**SMALL, "prompt": "a crimson fox", "prompt_original": "赤い狐"}).json()
        assert (edited["request"]["prompt"], edited["request"]["prompt_original"]) == ("a crimson fox", "赤い狐")


def test_a1111_api_translates(live_server) -> None:
    with live_server.client() as client:
        response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "赤い狐, 雪", "negative_prompt": "低品質"})
        assert response.status_code == 200, response.text
        out = response.json()
        info = json.loads(out["info"])
        assert (info["prompt"], info["prompt_original"]) == ("red fox, snow", "赤い狐, 雪")
        assert (info["negative_prompt"], info["negative_prompt_original"]) == ("low quality", "低品質")
        infotext, recorded = _png_records(base64.b64decode(out["images"][0]))
        assert infotext["prompt"] == "red fox, snow" and recorded["prompt_original"] == "赤い狐, 雪"
        assert info["infotexts"][0].startswith("red fox, snow\nNegative prompt: low quality\n")
        off = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "赤い狐", "translate": False}).json()
        assert json.loads(off["info"])["prompt"] == "赤い狐"


def test_openai_api_translates(live_server) -> None:
    with live_server.client() as client:
        response = client.post("/v1/images/generations", json={"prompt": "高画質, 赤い狐", "size": "64x64", "response_format": "b64_json"})
        assert response.status_code == 200, response.text
        item = response.json()["data"][0]
        assert item["revised_prompt"] == "high image quality, red fox"
        infotext, recorded = _png_records(base64.b64decode(item["b64_json"]))
        assert infotext["prompt"] == "high image quality, red fox" and recorded["prompt_original"] == "高画質, 赤い狐"
        off = client.post("/v1/images/generations", json={"prompt": "赤い狐", "size": "64x64", "translate": False}).json()
        assert off["data"][0]["revised_prompt"] == "赤い狐"


def test_the_preview_endpoint(live_server) -> None:
    with live_server.client() as client:
        out = client.post("/api/v1/translate", json={"prompt": "(赤い狐:1.2), BREAK ｶﾞﾝﾀﾞﾑ", "negative_prompt": "blurry"}).json()
        assert out == {"translated": True, "prompt": "(red fox:1.2), BREAK ガンダム", "negative_prompt": "blurry",
                       "untranslated": ["ガンダム"], "translator": "dictionary"}
        same = client.post("/api/v1/translate", json={"prompt": "a fox"}).json()
        assert same["translated"] is False and same["prompt"] == "a fox"
        assert client.post("/api/v1/translate", json={"prompt": 5}).status_code == 422


def test_translator_off_and_blocklist_on_both_texts(make_server) -> None:
    server = make_server(translator="off", prompt_blocklist=["狐", "fox"])
    with server.client() as client:
        assert client.get("/api/v1/options").json()["translator"] == "off"
        refused = client.post("/api/v1/jobs", json={**SMALL, "prompt": "赤い狐"})
        assert refused.status_code == 403
    translating = make_server(prompt_blocklist=["fox"])
    with translating.client() as client:
        # Written in Japanese, blocked in English.
        assert client.post("/api/v1/jobs", json={**SMALL, "prompt": "赤い狐"}).status_code == 403
        assert client.post("/api/v1/jobs", json={**SMALL, "prompt": "赤い猫"}).status_code == 201
