"""`kakumei generate` with a Japanese prompt: translated before encoding, both recorded in the
PNG, and `--from` makes the same bytes again."""

from __future__ import annotations

import json
from pathlib import Path

from kakumei.engine.metadata import parse_infotext, read_metadata

SMALL = ["--steps", "2", "-W", "64", "-H", "64", "--seed", "5"]


def out_files(cli_env) -> list[Path]:
    return sorted(Path(cli_env["KAKUMEI_OUTPUT_DIR"]).glob("*.png"))


def test_generate_translates_and_from_regenerates_the_same_bytes(run_cli, cli_env) -> None:
    code, _, err = run_cli("generate", "(赤い狐:1.3), 雪の森, ｶﾞﾝﾀﾞﾑ", "-n", "低品質", *SMALL)
    assert code == 0, err
    assert "translated: (red fox:1.3), snow forest, ガンダム" in err
    assert "translated negative prompt: low quality" in err
    assert "note: not in the dictionary, kept as written: ガンダム" in err
    first = out_files(cli_env)[0]
    meta = read_metadata(first)
    assert parse_infotext(meta.parameters or "")["prompt"] == "(red fox:1.3), snow forest, ガンダム"
    request = meta.kakumei["request"]
    assert (request["prompt_original"], request["negative_prompt_original"]) == ("(赤い狐:1.3), 雪の森, ｶﾞﾝﾀﾞﾑ", "低品質")

    code, _, err = run_cli("generate", "--from", str(first))
    assert code == 0, err
    assert "translated" not in err  # the recorded English is used as it is
    assert out_files(cli_env)[-1].read_bytes() == first.read_bytes()

    # A new prompt over --from is translated afresh.
    code, _, err = run_cli("generate", "--from", str(first), "青い猫")
    assert code == 0, err
    code, out, _ = run_cli("info", "--json", str(out_files(cli_env)[-1]))
    again = json.loads(out)["request"]
    assert (again["prompt"], again["prompt_original"]) == ("blue cat", "青い猫")
    assert again["negative_prompt"] == "low quality"


def test_no_translate_sends_it_as_written(run_cli, cli_env) -> None:
    code, _, err = run_cli("generate", "赤い狐", "--no-translate", *SMALL)
    assert code == 0, err
    assert "translated" not in err
    meta = read_metadata(out_files(cli_env)[0])
    assert parse_infotext(meta.parameters or "")["prompt"] == "赤い狐"
    assert meta.kakumei["request"]["translate"] is False


def test_translator_off_in_the_settings(run_cli, cli_env, monkeypatch) -> None:
    monkeypatch.setenv("KAKUMEI_TRANSLATOR", "off")
    code, _, err = run_cli("generate", "赤い狐", *SMALL)
    assert code == 0, err
    assert parse_infotext(read_metadata(out_files(cli_env)[0]).parameters or "")["prompt"] == "赤い狐"
