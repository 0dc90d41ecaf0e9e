"""A1111 infotext: exact writing, parsing back, PNG/JPEG/WebP storage, pasting (lora_ui/infotext.py)."""
import io
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from lora_ui.infotext import (
    InfotextError,
    create_infotext,
    decode_user_comment,
    encode_user_comment,
    format_lora_hashes,
    params_for_infotext,
    parse_infotext,
    parse_lora_hashes,
    quote,
    read_infotext,
    resolve_pasted_loras,
    save_image_with_infotext,
    unquote,
)

# Hand-written in A1111 v1.10's format (what its "PNG Info" tab shows for real images).
A1111_BASIC = (
    "a photo of a cat <lora:LowRA:0.6>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 3135098381, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'Lora hashes: "LowRA: 0dfafd9d0f1b, other: 1234567890ab", Version: v1.10.1'
)
A1111_HIRES = (
    "masterpiece, best quality, 1girl, (red scarf:1.2), BREAK\n"
    "snowy street <lora:add_detail:0.5> <lora:style v2:0.8:0.4>\n"
    "Negative prompt: (worst quality:1.4), lowres,\n"
    "bad hands\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, "
    "Model hash: e6bb9ea85b, Model: anything-v4.5, Denoising strength: 0.45, Clip skip: 2, "
    'Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+ Anime6B, '
    'Lora hashes: "add_detail: 7c6bad76eb54, style v2: 0123456789ab", Version: v1.10.1'
)
A1111_NO_NEGATIVE = (
    "sunset over the sea\n"
    "Steps: 30, Sampler: DDIM, Schedule type: Uniform, CFG scale: 5.5, Seed: 7, Size: 1024x1024, "
    'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Model: "name, with: comma", Version: v1.10.1'
)


def test_create_basic_matches_a1111_byte_for_byte():
    params = {
        "Steps": 20, "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": 7.0,
        "Seed": 3135098381, "Size": (512, 512), "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
        "Lora hashes": {"LowRA": "0dfafd9d0f1b", "other": "1234567890ab"}, "Version": "v1.10.1",
        "Clip skip": None,
    }
    assert create_infotext("a photo of a cat <lora:LowRA:0.6>", "blurry, lowres", params) == A1111_BASIC


def test_create_puts_known_keys_in_a1111_order_and_extras_before_version():
    params = {
        "Version": "v1.10.1", "Lora hashes": "add_detail: 7c6bad76eb54, style v2: 0123456789ab",
        "Hires upscale": 2, "Hires steps": 15, "Hires upscaler": "R-ESRGAN 4x+ Anime6B",
        "Clip skip": 2, "Denoising strength": 0.45, "Model": "anything-v4.5", "Model hash": "e6bb9ea85b",
        "Size": "512x768", "Seed": 42, "CFG scale": 7.5, "Schedule type": "Karras", "Sampler": "DPM++ 2M",
        "Steps": 28,
    }
    prompt = "masterpiece, best quality, 1girl, (red scarf:1.2), BREAK\nsnowy street <lora:add_detail:0.5> <lora:style v2:0.8:0.4>"
    text = create_infotext(prompt, "(worst quality:1.4), lowres,\nbad hands", params)
    # A1111 puts extras (Hires ..., Lora hashes) after its fixed keys in insertion order:
    expected = A1111_HIRES.replace(
        'Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+ Anime6B, Lora hashes: "add_detail: 7c6bad76eb54, style v2: 0123456789ab"',
        'Lora hashes: "add_detail: 7c6bad76eb54, style v2: 0123456789ab", Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+ Anime6B',
    )
    assert text == expected


@pytest.mark.parametrize("example", [A1111_BASIC, A1111_HIRES])
def test_parse_then_create_round_trips_byte_for_byte(example):
    parsed = parse_infotext(example)
    again = create_infotext(parsed["Prompt"], parsed["Negative prompt"], params_for_infotext(parsed))
    assert again == example


def test_parse_fields_and_types():
    parsed = parse_infotext(A1111_HIRES)
    assert parsed["Prompt"] == ("masterpiece, best quality, 1girl, (red scarf:1.2), BREAK\n"
                                "snowy street <lora:add_detail:0.5> <lora:style v2:0.8:0.4>")
    assert parsed["Negative prompt"] == "(worst quality:1.4), lowres,\nbad hands"
    assert parsed["Steps"] == 28 and type(parsed["Steps"]) is int
    assert parsed["CFG scale"] == 7.5
    assert parsed["Seed"] == 42
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 768)
    assert parsed["Denoising strength"] == 0.45
    assert parsed["Clip skip"] == 2
    assert parsed["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert parse_lora_hashes(parsed["Lora hashes"]) == {"add_detail": "7c6bad76eb54", "style v2": "0123456789ab"}


def test_parse_without_negative_and_with_quoted_value():
    parsed = parse_infotext(A1111_NO_NEGATIVE)
    assert parsed["Prompt"] == "sunset over the sea"
    assert parsed["Negative prompt"] == ""
    assert parsed["Model"] == "name, with: comma"  # later duplicate key wins, unquoted
    assert parsed["CFG scale"] == 5.5
    assert parsed["Clip skip"] == 1  # A1111 default when absent


def test_old_sampler_names_are_split_into_schedule_type():
    parsed = parse_infotext("cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 64x64")
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras")


def test_prompt_only_text_has_no_parameters():
    parsed = parse_infotext("just a prompt, with: colons")
    assert parsed == {"Prompt": "just a prompt, with: colons", "Negative prompt": ""}


def test_quoting_rules():
    assert quote("Euler a") == "Euler a"
    assert quote("a, b") == '"a, b"'
    assert quote("a: b") == '"a: b"'
    assert quote('say "hi"') == '"say \\"hi\\""'
    assert quote("line\nbreak") == '"line\\nbreak"'
    assert unquote('"a, b"') == "a, b"
    assert unquote('"broken') == '"broken'
    assert unquote('"\\x"') == '"\\x"'  # invalid JSON escape: kept as written
    params = {"Steps": 1, "Sampler": "x", "Seed": 2, "Model": 'we"ird, name: v2\nnext'}
    assert parse_infotext(create_infotext("p", "", params))["Model"] == 'we"ird, name: v2\nnext'


def test_lora_hashes_format_drops_separators_from_names():
    assert format_lora_hashes({"a:b": "111", "c,d": "222", "": "x", "e": ""}) == "ab: 111, cd: 222"
    assert parse_lora_hashes("a: 1, garbage, : 3, b:2") == {"a": "1", "b": "2"}
    assert parse_lora_hashes(None) == {}


def test_value_formatting():
    text = create_infotext("p", "", {"Steps": 5, "CFG scale": 7.25, "Seed": 1, "Tiling": True,
                                      "Denoising strength": 0.7, "Clip skip": None})
    assert text == "p\nSteps: 5, CFG scale: 7.25, Seed: 1, Denoising strength: 0.7, Tiling: True"
    # key == value is written once (A1111 quirk)
    assert create_infotext("p", "", {"Steps": 1, "Seed": 1, "Sampler": "a", "Flag": "Flag"}).endswith("Sampler: a, Seed: 1, Flag")


# ---------------------------------------------------------------- images

@pytest.mark.parametrize("suffix", ["png", "jpg", "webp"])
def test_write_and_read_back_each_format(tmp_path, suffix):
    text = A1111_HIRES + " ünïcode 漢字"
    path = save_image_with_infotext(Image.new("RGB", (16, 16), (200, 10, 10)), tmp_path / f"x.{suffix}", text)
    assert read_infotext(path) == text
    assert read_infotext(path.read_bytes()) == text
    with Image.open(path) as image:
        assert read_infotext(image) == text
    assert parse_infotext(read_infotext(path))["Seed"] == 42


def test_png_uses_the_parameters_chunk(tmp_path):
    path = save_image_with_infotext(Image.new("RGB", (4, 4)), tmp_path / "a.png", A1111_BASIC)
    with Image.open(path) as image:
        assert image.info["parameters"] == A1111_BASIC


def test_jpeg_user_comment_is_what_piexif_writes(tmp_path):
    path = save_image_with_infotext(Image.new("RGB", (4, 4)), tmp_path / "a.jpg", "héllo")
    with Image.open(path) as image:
        raw = image.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert raw == b"UNICODE\x00" + "héllo".encode("utf-16-be")


def test_user_comment_decoding_variants():
    assert decode_user_comment(encode_user_comment("abc")) == "abc"
    assert decode_user_comment(b"UNICODE\x00" + "abc, d".encode("utf-16-le")) == "abc, d"
    assert decode_user_comment(b"UNICODE\x00" + "x".encode("utf-16")) == "x"  # with BOM
    assert decode_user_comment(b"ASCII\x00\x00\x00hello\x00") == "hello"
    assert decode_user_comment(b"\x00" * 8 + b"plain utf8") == "plain utf8"
    assert decode_user_comment(b"short") is None
    assert decode_user_comment(None) is None


def test_images_without_infotext_give_none(tmp_path):
    for suffix in ("png", "jpg", "webp"):
        path = tmp_path / f"plain.{suffix}"
        Image.new("RGB", (4, 4)).save(path)
        assert read_infotext(path) is None


def test_jpeg_comment_is_read(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("RGB", (4, 4)).save(path, comment=b"Steps: 3, Seed: 1, Sampler: x")
    assert read_infotext(path) == "Steps: 3, Seed: 1, Sampler: x"


def test_unreadable_inputs_raise_infotext_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InfotextError, match="bad.png: not a readable image"):
        read_infotext(bad)
    with pytest.raises(InfotextError, match="file not found"):
        read_infotext(tmp_path / "missing.png")
    with pytest.raises(InfotextError, match="cannot read infotext from a int"):
        read_infotext(3)
    with pytest.raises(InfotextError, match="format GIF"):
        save_image_with_infotext(Image.new("RGB", (4, 4)), tmp_path / "x.gif", "t")
    assert not (tmp_path / "x.gif").exists()


# ---------------------------------------------------------------- pasting

class FakeEntry:
    def __init__(self, name, short_hash):
        self.name, self.short = name, short_hash


class FakeLibrary:
    def __init__(self, entries):
        self.entries = entries

    def resolve(self, name):
        return next((e for e in self.entries if e.name == name), None)

    def find_by_hash(self, short_hash):
        return next((e for e in self.entries if e.short == short_hash), None)


def test_pasted_loras_resolve_by_hash_even_if_renamed():
    library = FakeLibrary([FakeEntry("renamed_detail", "7c6bad76eb54"), FakeEntry("style v2", "0123456789ab")])
    parsed = parse_infotext(A1111_HIRES)
    prompt, messages = resolve_pasted_loras(parsed["Prompt"], parsed["Lora hashes"], library)
    assert "<lora:renamed_detail:0.5>" in prompt and "<lora:add_detail:" not in prompt
    assert "<lora:style v2:0.8:0.4>" in prompt
    assert messages == ["<lora:add_detail>: matched by hash 7c6bad76eb54 to the local file 'renamed_detail'"]


def test_pasted_loras_unknown_hash_and_name_are_reported_and_kept():
    library = FakeLibrary([FakeEntry("x", "aaaaaaaaaaaa")])
    prompt, messages = resolve_pasted_loras("<lora:gone:1> <lora:nohash:1> <lora:x:1>",
                                            {"gone": "bbbbbbbbbbbb", "x": "cccccccccccc"}, library)
    assert prompt == "<lora:gone:1> <lora:nohash:1> <lora:x:1>"
    assert messages == [
        "<lora:gone>: no local LoRA has this name or the hash bbbbbbbbbbbb",
        "<lora:nohash>: no local LoRA has this name and the infotext has no hash for it",
        "<lora:x>: the local file has a different hash than cccccccccccc; using it anyway",
    ]


# ---------------------------------------------------------------- fuzzing

info_alphabet = string.ascii_letters + string.digits + ' ,:"\\\n-x.漢'


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=info_alphabet, max_size=120))
def test_fuzz_parse_never_raises(text):
    parsed = parse_infotext(text)
    assert isinstance(parsed["Prompt"], str) and isinstance(parsed["Negative prompt"], str)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + ' ,:"\\-', max_size=30),
       st.text(alphabet=string.ascii_letters + ' ,:"\\-', max_size=30),
       st.integers(min_value=1, max_value=150), st.integers(min_value=0, max_value=2**32 - 1),
       st.text(alphabet=string.ascii_letters + string.digits + ' ,:"\\-\n', min_size=1, max_size=20))
def test_fuzz_created_infotext_parses_back(prompt, negative, steps, seed, model):
    prompt, negative = prompt.strip(), negative.strip()
    if prompt.startswith("Negative prompt:"):
        prompt = "p " + prompt
    params = {"Steps": steps, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": seed, "Size": "64x64", "Model": model}
    parsed = parse_infotext(create_infotext(prompt, negative, params))
    assert parsed["Steps"] == steps and parsed["Seed"] == seed and parsed["Model"] == model
    assert parsed["Prompt"] == prompt and parsed["Negative prompt"] == negative


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_reading_garbage_bytes_raises_only_infotext_error(data):
    try:
        result = read_infotext(b"\x89PNG\r\n\x1a\n" + data)
    except InfotextError:
        return
    assert result is None or isinstance(result, str)


def test_reading_truncated_real_png_raises_only_infotext_error_or_reads(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=None)
    full = buffer.getvalue()
    for cut in range(0, len(full), 7):
        try:
            read_infotext(full[:cut])
        except InfotextError as exc:
            assert "image data" in str(exc)
