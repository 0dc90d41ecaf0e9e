"""styles.csv as A1111 reads, applies and writes it."""
import pytest

from lora_ui.styles import PromptStyle, StyleDatabase, StyleError, apply_styles_to_prompt, merge_prompts


def test_merge_rules_as_a1111():
    assert merge_prompts("masterpiece, {prompt}, 8k", "a cat") == "masterpiece, a cat, 8k"
    assert merge_prompts("oil painting", "a cat ") == "a cat, oil painting"
    assert merge_prompts("oil painting", "") == "oil painting"
    assert merge_prompts("", "a cat") == "a cat"
    assert apply_styles_to_prompt("a cat", ["{prompt} in rain", "film grain"]) == "a cat in rain, film grain"


def test_read_apply_and_save(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text('name,prompt,negative_prompt\n"Photo","photo of {prompt}, sharp","blurry, lowres"\n'
                    'Plain, watercolor ,\n', encoding="utf-8-sig")
    db = StyleDatabase(path)
    assert db.names() == ["Photo", "Plain"]
    assert db.apply("a dog", "ugly", ["Photo", "Plain"]) == ("photo of a dog, sharp, watercolor", "ugly, blurry, lowres")
    with pytest.raises(StyleError, match="unknown style 'Nope'.*Photo, Plain"):
        db.apply("a", "", ["Nope"])
    db.save_style(PromptStyle("Mine", "{prompt}, by me", "bad, \"quoted\""))
    db.save_style(PromptStyle("Plain", "ink", ""))  # replaced in place
    again = StyleDatabase(path)
    assert [(s.name, s.prompt, s.negative_prompt) for s in again.styles()] == [
        ("Photo", "photo of {prompt}, sharp", "blurry, lowres"), ("Plain", "ink", ""),
        ("Mine", "{prompt}, by me", 'bad, "quoted"')]
    assert path.read_bytes().startswith(b"\xef\xbb\xbfname,prompt,negative_prompt\n")
    assert StyleDatabase(tmp_path / "missing.csv").styles() == []
