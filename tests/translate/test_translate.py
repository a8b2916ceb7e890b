"""The offline translator on the real tokenizer and JMdict: prompts as people write them,
prompt syntax that must come through untouched, and bad input that must still give a prompt."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from kakumei.schemas import GenerationRequest
from kakumei.translate import (
    INSTALL_HINT,
    TranslatorUnavailable,
    contains_japanese,
    translate_request,
    translate_text,
    translator_for,
)
from kakumei.translate.dictionary import clean_gloss
from kakumei.translate.text import fold

# Japanese prompts in the styles people write them (tag lists, sentences, weights, LoRA tags,
# prompt editing, full-width and half-width forms) and the English expected, word for word.
TABLE = [
    ("高画質, 赤い狐, 雪", "high image quality, red fox, snow"),
    ("(赤い狐:1.3), 雪の森", "(red fox:1.3), snow forest"),
    ("<lora:アニメ風:0.8> 女の子, 長い髪, 青い目", "<lora:アニメ風:0.8> girl, long hair, blue eyes"),
    ("傑作、最高品質、1人の女の子、笑顔", "masterpiece, best quality, 1 person girl, smile"),
    ("夕焼けの海、美しい風景", "evening glow sea, beautiful landscape"),
    ("桜の木の下で猫が寝ている", "cherry tree below cat sleep"),
    ("黒髪の少女が着物を着て立っている", "black hair girl kimono wear stand"),
    ("[猫:犬:0.5], 公園", "[cat:dog:0.5], park"),
    ("masterpiece, best quality, 赤いドレス, BREAK 青空", "masterpiece, best quality, red dress, BREAK blue sky"),
    ("（赤い狐：1.2）、雪景色", "(red fox:1.2), snow scene"),
    ("東京の夜景、ネオン、雨", "Tokyo night view, neon, rain"),
    ("水彩画、花、蝶", "watercolor painting, flower, butterfly"),
    ("宇宙飛行士が馬に乗っている", "astronaut get on a horse"),
    ("油絵、山と湖", "oil painting, mountain and lake"),
    ("EasyNegative, 低品質, ぼやけた", "EasyNegative, low quality, become dim"),
    ("【高画質】美少女", "(high image quality) beautiful girl"),
    ("城、ファンタジー、ドラゴン", "castle, fantasy, dragon"),
    ("金髪の騎士、鎧、剣", "blond hair knight, armor, sword"),
    ("((笑顔)), 制服, 教室", "((smile)), uniform, classroom"),
    ("[赤い|青い]花", "[red|blue] flower"),
    ("森の中の小さな家", "forest inside small house"),
    ("白い猫と黒い犬", "white cat and black dog"),
    ("浮世絵風の富士山", "ukiyo-e style Mount Fuji"),
    ("満月の夜、狼", "full moon night, wolf"),
    ("侍、刀、桜吹雪", "samurai, sword, blizzard of falling cherry blossoms"),
    ("古い寺、苔、静か", "old temple, moss, quiet"),
    ("雨の日の東京", "rain day Tokyo"),
    ("未来都市、サイバーパンク、夜", "future town, cyberpunk, night"),
    ("コーヒーカップ、木のテーブル、朝の光", "coffee cup, tree table, morning light"),
    ("笑っている老人の肖像画", "laugh old person portrait"),
    ("海辺の灯台、夕日", "beach lighthouse, evening sun"),
    ("ｶﾜｲｲ ﾈｺ", "cute cat"),
    ("赤い狐 BREAK 雪の森", "red fox BREAK snow forest"),
    ("魔法使いの少女、杖、星空", "magician girl, staff, starry sky"),
]


@pytest.fixture(scope="module")
def dictionary():
    return translator_for("dictionary")


def test_the_table_is_big_enough() -> None:
    assert len(TABLE) >= 30
    # Only extra-network tags keep Japanese (a file's name) in the English.
    assert all(contains_japanese(jp) and not contains_japanese(re.sub(r"<[^>]*>", "", en)) for jp, en in TABLE)


@pytest.mark.parametrize(("japanese", "english"), TABLE, ids=[jp for jp, _ in TABLE])
def test_prompts_as_people_write_them(dictionary, japanese: str, english: str) -> None:
    got = translate_text(japanese, dictionary)
    assert got.text.split(" ") == english.split(" "), got.text
    assert got.unknown == ()


def test_compounds_stay_whole(dictionary) -> None:
    # Longest match first: one entry, not 高 + 画質.
    assert translate_text("高画質", dictionary).text == "high image quality"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("<lora:赤い狐:0.8>", "<lora:赤い狐:0.8>"),  # a LoRA's file name is never translated
        ("<hypernet:猫:1>, 猫", "<hypernet:猫:1>, cat"),
        ("(狐:1.3)", "(fox:1.3)"),
        ("[狐:猫:0.5]", "[fox:cat:0.5]"),
        ("[狐:猫:10]", "[fox:cat:10]"),
        ("狐 BREAK 猫", "fox BREAK cat"),
        ("EasyNegative, 狐", "EasyNegative, fox"),  # an embedding's name passes through
        ("\\(狐\\)", "\\(fox\\)"),  # escaped brackets stay escaped
        ("a photo of a 狐 in snow", "a photo of a fox in snow"),
        ("1girl狐", "1girl fox"),
        ("狐\n猫", "fox\ncat"),
    ],
)
def test_prompt_syntax_comes_through(dictionary, prompt: str, expected: str) -> None:
    assert translate_text(prompt, dictionary).text == expected


@pytest.mark.parametrize(
    ("prompt", "expected", "unknown"),
    [
        ("狐🦊と猫", "fox 🦊 cat", ()),  # emoji kept where they were
        ("ｶﾞﾝﾀﾞﾑ, ﾛﾎﾞｯﾄ", "ガンダム, robot", ("ガンダム",)),  # not in JMdict: kept and named
        ("（狐）", "(fox)", ()),
        ("狐。猫！", "fox, cat!", ()),
        ("の", "", ()),  # only a particle: an empty prompt, not a crash
        ("、。「」", "", ()),
        ("Ｆｏｘ　ｉｎ　ｓｎｏｗ", "Fox in snow", ()),  # full-width letters and space
        ("狐" * 2000, " ".join(["fox"] * 2000), ()),
        ("Привет 狐 مرحبا", "Привет fox مرحبا", ()),
    ],
)
def test_bad_input_still_gives_a_prompt(dictionary, prompt: str, expected: str, unknown: tuple[str, ...]) -> None:
    got = translate_text(prompt, dictionary)
    assert got.text == expected
    assert got.unknown == unknown


def test_english_is_left_alone_and_loads_nothing() -> None:
    code = (
        "import sys\n"
        "from kakumei.schemas import GenerationRequest\n"
        "from kakumei.translate import translate_request, translator_for\n"
        "r = GenerationRequest(prompt='a (red fox:1.2), <lora:x:0.5>', negative_prompt='blurry')\n"
        "assert translate_request(r, translator_for('dictionary')) is r\n"
        "assert not {'fugashi', 'jamdict', 'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_any_thread_translates(dictionary) -> None:
    # The server translates in its thread pool; each word here is new to the shared cache.
    from concurrent.futures import ThreadPoolExecutor

    words = [("松", "pine tree"), ("竹", "bamboo"), ("梅", "Japanese apricot"), ("鶴", "crane"), ("亀", "tortoise")]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda w: translate_text(w[0], dictionary), words))
    assert [(g.text, g.unknown) for g in got] == [(english, ()) for _, english in words]


def test_past_the_time_allowed_the_rest_is_kept_and_named(dictionary) -> None:
    # No time at all: every run is kept as written, and named.
    got = translate_text("(赤い狐:1.2), 雪の森, snow", dictionary, seconds=0)
    assert got.text == "(赤い狐:1.2), 雪の森, snow"
    assert got.unknown == ("赤い狐", "雪の森")
    assert translate_text("(赤い狐:1.2)", dictionary).text == "(red fox:1.2)"


def test_a_translator_that_fails_on_a_word_keeps_it() -> None:
    class Broken:
        name = "broken"

        def load(self) -> None:
            pass

        def translate_run(self, run: str, deadline: float | None = None) -> tuple[str, list[str]]:
            raise RuntimeError("boom")

    got = translate_text("(狐:1.2), snow", Broken())
    assert got.text == "(狐:1.2), snow"
    assert got.unknown == ("狐",)


def test_without_the_extra_the_refusal_names_the_command() -> None:
    # The extra's modules made unimportable, as on an install without kakumei[ja].
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('fugashi', 'jamdict'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from kakumei.translate import translate_text, translator_for, TranslatorUnavailable\n"
        "try:\n"
        "    translate_text('赤い狐', translator_for('dictionary'))\n"
        "except TranslatorUnavailable as exc:\n"
        "    print(exc)\n"
        "print(translate_text('a red fox', translator_for('dictionary')).text)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.splitlines() == [
        f"Japanese prompts need the offline dictionary, which is not installed: {INSTALL_HINT}",
        "a red fox",
    ]


def test_off_sends_japanese_as_written() -> None:
    assert translator_for("off") is None
    assert translate_text("赤い狐", None).text == "赤い狐"


def test_a_missing_model_folder_is_one_sentence(tmp_path) -> None:
    translator = translator_for(str(tmp_path / "nothing-here"))
    with pytest.raises(TranslatorUnavailable, match="not a folder"):
        translate_text("赤い狐", translator)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TranslatorUnavailable, match="cannot be loaded"):
        translate_text("赤い狐", translator_for(str(tmp_path / "empty")))


def test_the_request_records_both(dictionary) -> None:
    request = GenerationRequest(prompt="(赤い狐:1.3), 雪", negative_prompt="低品質, ｶﾞﾝﾀﾞﾑ", seed=5)
    done = translate_request(request, dictionary)
    assert (done.prompt, done.prompt_original) == ("(red fox:1.3), snow", "(赤い狐:1.3), 雪")
    assert (done.negative_prompt, done.negative_prompt_original) == ("low quality, ガンダム", "低品質, ｶﾞﾝﾀﾞﾑ")
    assert done.untranslated == ["ガンダム"]
    assert done.seed == 5
    # Translated once: a regeneration of the recorded request is the same request.
    assert translate_request(done, dictionary) is done
    # Only the negative prompt in Japanese: the prompt records no original.
    half = translate_request(GenerationRequest(prompt="a fox", negative_prompt="低品質"), dictionary)
    assert (half.prompt, half.prompt_original, half.negative_prompt) == ("a fox", None, "low quality")


def test_translate_false_turns_it_off(dictionary) -> None:
    request = GenerationRequest(prompt="赤い狐", translate=False)
    assert translate_request(request, dictionary) is request


def test_english_the_user_edited_is_kept(dictionary) -> None:
    # The page sends the English it shows (maybe edited) with the original: no new translation.
    request = GenerationRequest(prompt="a crimson fox", prompt_original="赤い狐")
    assert translate_request(request, dictionary) is request


@pytest.mark.parametrize(
    ("gloss", "clean"),
    [
        ("hair (on the head)", "hair"),
        ("dog (Canis (lupus) familiaris)", "dog"),
        ("to run", "run"),
        ("the future", "future"),
        ("to", "to"),
    ],
)
def test_glosses_are_cleaned(gloss: str, clean: str) -> None:
    assert clean_gloss(gloss) == clean


@pytest.mark.parametrize(
    ("text", "japanese"),
    [
        ("a red fox", False),
        ("(fox:1.2) <lora:x:1> BREAK [a:b:0.5]", False),
        ("café, naïve, Привет 🦊", False),
        ("きつね", True),
        ("キツネ", True),
        ("狐", True),
        ("ｷﾂﾈ", True),
        ("fox（snow）", True),  # full-width brackets are folded too
        ("fox、snow", True),
    ],
)
def test_what_counts_as_japanese(text: str, japanese: bool) -> None:
    assert contains_japanese(text) is japanese


def test_folding() -> None:
    assert fold("（ｶﾞｷﾞ：１．２）") == "(ガギ:1.2)"
