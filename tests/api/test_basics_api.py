"""Checkpoint/VAE choice, embeddings, styles and the X/Y/Z plot through the API, driven by a real A1111
client library (webuiapi) where it has a call for it, else by plain HTTP as A1111 clients do."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_ui.infotext import parse_infotext, read_infotext
from tests.api.conftest import ServerThread, kohya_lora
from tests.api.helpers import assert_error, decode_png, info_of, pixels

webuiapi = pytest.importorskip("webuiapi")

BASE = {"prompt": "a red circle", "steps": 2, "seed": 99, "save_images": False, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from fastapi import FastAPI

    from lora_ui.api import create_api
    from lora_ui.engine import devices
    from lora_ui.engine.checkpoints import ModelManager
    from lora_ui.engine.worker import Worker
    from lora_ui.library import LoraLibrary
    from lora_ui.testing.ldm_export import vae_state_dict
    from lora_ui.testing.tiny_models import tiny_sd1_pipeline

    root = tmp_path_factory.mktemp("basics-api")
    ckpts = root / "models" / "Stable-diffusion"
    a = tiny_sd1_pipeline(0)
    a.save_pretrained(ckpts / "tiny-a")
    tiny_sd1_pipeline(5).save_pretrained(ckpts / "tiny-b")
    (root / "models" / "VAE").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in vae_state_dict(tiny_sd1_pipeline(9).vae).items()},
              str(root / "models" / "VAE" / "other.safetensors"))
    (root / "embeddings").mkdir()
    gen = torch.Generator().manual_seed(1)
    save_file({"emb_params": torch.randn(2, 32, generator=gen)}, str(root / "embeddings" / "twovec.safetensors"))
    save_file({"clip_l": torch.randn(1, 32, generator=gen), "clip_g": torch.randn(1, 48, generator=gen)},
              str(root / "embeddings" / "xlonly.safetensors"))
    (root / "styles.csv").write_text('name,prompt,negative_prompt\nframed,"framed {prompt}, border",blurry\n'
                                     "plain,flat colours,\n", encoding="utf-8")
    (root / "models" / "Lora").mkdir()
    save_file(kohya_lora(a, seed=3), str(root / "models" / "Lora" / "alpha.safetensors"))
    settings = SimpleNamespace(data_dir=root, ckpt_dirs=[ckpts], allow_pickle=False, demo_model_dir=root / "none",
                               styles_path=root / "styles.csv", vae_dirs=[root / "models" / "VAE"],
                               embeddings_dirs=[root / "embeddings"], checkpoint_cache=2, clip_skip=1)
    models = ModelManager(settings, device_choice=devices.choose("cpu", "fp32"))
    models.switch("tiny-a")
    library = LoraLibrary([root / "models" / "Lora"], cache_dir=root / "cache")
    library.refresh()
    worker = Worker.for_model_manager(models, library=library)
    ctx = SimpleNamespace(settings=settings, models=models, library=library, worker=worker)
    app = FastAPI()
    api = create_api(app, ctx, None)
    server = ServerThread(app)
    yield SimpleNamespace(root=root, ctx=ctx, url=server.url)
    server.stop()
    worker.shutdown()
    api.close()


@pytest.fixture
def client(env):
    with httpx.Client(base_url=env.url, timeout=600) as c:
        yield c


@pytest.fixture
def webui(env):
    host, port = env.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port))


def _txt2img(webui, **kw):
    args = dict(prompt="a red circle", steps=2, seed=99, sampler_name="Euler", width=64, height=64, cfg_scale=7.0)
    args.update(kw)
    return webui.txt2img(**args)


def test_checkpoint_switch_through_options_a_b_a(env, webui, client):
    first = _txt2img(webui)
    assert webui.util_get_current_model().startswith("tiny-a")
    titles = [m["title"] for m in webui.get_sd_models()]
    assert {t.split(" ")[0] for t in titles} >= {"tiny-a", "tiny-b"}
    webui.refresh_checkpoints()
    title_a = next(t for t in titles if t.startswith("tiny-a"))
    webui.util_set_model("tiny-b")
    options = webui.get_options()
    assert options["sd_model_checkpoint"].startswith("tiny-b [")
    b = _txt2img(webui)
    assert parse_infotext(b.info["infotexts"][0])["Model"] == "tiny-b"
    assert b.info["sd_model_name"] == "tiny-b"
    assert not np.array_equal(np.asarray(b.image), np.asarray(first.image))
    webui.util_set_model(title_a, find_closest=False)  # webuiapi's fuzzy match would pick either title
    assert webui.util_get_current_model() == title_a
    again = _txt2img(webui)
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))
    assert again.info["infotexts"] == first.info["infotexts"]


def test_vae_listing_choice_and_automatic(env, webui, client):
    assert webui.get_sd_vae() == [{"model_name": "other.safetensors",
                                   "filename": str(env.root / "models" / "VAE" / "other.safetensors")}]
    assert client.post("/sdapi/v1/refresh-vae").status_code == 200
    own = _txt2img(webui)
    with_vae = _txt2img(webui, override_settings={"sd_vae": "other.safetensors"})
    assert not np.array_equal(np.asarray(own.image), np.asarray(with_vae.image))
    info = parse_infotext(with_vae.info["infotexts"][0])
    assert info["VAE"] == "other.safetensors"
    assert info["VAE hash"] == hashlib.sha256((env.root / "models/VAE/other.safetensors").read_bytes()).hexdigest()[:10]
    webui.set_options({"sd_vae": "other.safetensors"})
    assert webui.get_options()["sd_vae"] == "other.safetensors"
    assert np.array_equal(np.asarray(_txt2img(webui).image), np.asarray(with_vae.image))
    webui.set_options({"sd_vae": "Automatic"})
    back = _txt2img(webui)
    assert np.array_equal(np.asarray(back.image), np.asarray(own.image))
    assert "VAE" not in parse_infotext(back.info["infotexts"][0])
    assert_error(client.post("/sdapi/v1/options", json={"sd_vae": "nope"}), 422, "sd_vae")
    body = {**BASE, "override_settings": {"sd_vae": "nope.safetensors"}}
    assert_error(client.post("/sdapi/v1/txt2img", json=body), 422, "override_settings.sd_vae")


def test_embeddings_listing_and_use(env, webui):
    listed = webui.get_embeddings()
    assert listed["loaded"] == {"twovec": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                           "shape": 32, "vectors": 2}}
    assert set(listed["skipped"]) == {"xlonly"} and listed["skipped"]["xlonly"]["shape"] == 80
    used = _txt2img(webui, prompt="a red circle twovec")
    plain = _txt2img(webui, prompt="a red circle zzqq")
    assert not np.array_equal(np.asarray(used.image), np.asarray(plain.image))
    digest = hashlib.sha256((env.root / "embeddings" / "twovec.safetensors").read_bytes()).hexdigest()[:12]
    assert parse_infotext(used.info["infotexts"][0])["TI hashes"] == f"twovec: {digest}"


def test_styles_are_listed_applied_and_unknown_ones_refused(env, webui, client):
    assert webui.get_prompt_styles() == [
        {"name": "framed", "prompt": "framed {prompt}, border", "negative_prompt": "blurry"},
        {"name": "plain", "prompt": "flat colours", "negative_prompt": ""}]
    styled = _txt2img(webui, prompt="a cat", negative_prompt="ugly", styles=["framed", "plain"])
    expected_prompt, expected_negative = "framed a cat, border, flat colours", "ugly, blurry"
    assert styled.info["prompt"] == expected_prompt and styled.info["negative_prompt"] == expected_negative
    assert styled.info["styles"] == ["framed", "plain"]
    parsed = parse_infotext(styled.info["infotexts"][0])
    assert parsed["Prompt"] == expected_prompt and parsed["Negative prompt"] == expected_negative
    direct = _txt2img(webui, prompt=expected_prompt, negative_prompt=expected_negative)
    assert np.array_equal(np.asarray(direct.image), np.asarray(styled.image))
    assert_error(client.post("/sdapi/v1/txt2img", json={**BASE, "styles": ["nope"]}), 422, "styles")


def test_xyz_plot_as_a1111_clients_send_it(env, webui, client):
    assert "x/y/z plot" in webui.get_scripts()["txt2img"]
    steps, cfg = 4, 6  # A1111 1.10 axis indexes
    result = _txt2img(webui, script_name="x/y/z plot",
                      script_args=[steps, "2-3", [], cfg, "3, 7", [], 0, "", [], True, False, False, False,
                                   False, False, False, 0, False])
    assert len(result.images) == 1 + 4
    infotexts = result.info["infotexts"]
    grid_info = parse_infotext(infotexts[0])
    assert grid_info["Script"] == "X/Y/Z plot" and grid_info["X Type"] == "Steps" and grid_info["X Values"] == "2, 3"
    assert grid_info["Y Type"] == "CFG Scale" and grid_info["Y Values"] == "3.0, 7.0"
    cells = [parse_infotext(t) for t in infotexts[1:]]
    assert [(c["Steps"], c["CFG scale"]) for c in cells] == [(2, 3), (3, 3), (2, 7), (3, 7)]
    assert {c["Seed"] for c in cells} == {99}
    # each cell is exactly the single render with its values; the grid holds the cells at its bottom right
    single = _txt2img(webui, steps=3, cfg_scale=7.0)
    assert np.array_equal(np.asarray(result.images[4].convert("RGB")), np.asarray(single.image.convert("RGB")))
    grid = np.asarray(result.images[0].convert("RGB"))
    assert np.array_equal(grid[-64:, -64:], np.asarray(single.image.convert("RGB")))
    assert read_infotext(result.images[0]) == infotexts[0]
    assert result.images[0].size[0] > 128 and result.images[0].size[1] > 128


def test_xyz_by_axis_names_with_checkpoint_and_lora_weight(env, client):
    body = {**BASE, "prompt": "a red circle <lora:alpha:1>", "script_name": "x/y/z plot",
            "script_args": ["LoRA weight", "0, 1", [], "Checkpoint name", "", ["tiny-a", "tiny-b"]]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = info_of(r.json())
    cells = [parse_infotext(t) for t in info["infotexts"][1:]]
    assert [c["Model"] for c in cells] == ["tiny-a", "tiny-a", "tiny-b", "tiny-b"]
    assert "<lora:" not in cells[0]["Prompt"] and "<lora:alpha:1>" in cells[1]["Prompt"]
    assert info["xyz"]["renders"] == 4 and info["xyz"]["labels"]["y"] == ["tiny-a", "tiny-b"]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-a")  # restored


def test_xyz_plot_on_img2img_denoising_by_lora_weight(env, client):
    """A1111 runs the X/Y/Z script on /img2img too: the strength x weight grid of issue #16."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    body = {**BASE, "prompt": "a red circle <lora:alpha:1>", "width": 64, "height": 64,
            "init_images": [base64.b64encode(buffer.getvalue()).decode()], "script_name": "x/y/z plot",
            "script_args": ["LoRA weight", "0, 1", [], "Denoising", "0.3, 0.9", []]}
    assert "x/y/z plot" in client.get("/sdapi/v1/scripts").json()["img2img"]
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    info = info_of(r.json())
    grid = parse_infotext(info["infotexts"][0])
    assert grid["X Type"] == "LoRA weight" and grid["Y Type"] == "Denoising" and grid["Y Values"] == "0.3, 0.9"
    cells = [parse_infotext(t) for t in info["infotexts"][1:]]
    assert [c["Denoising strength"] for c in cells] == [0.3, 0.3, 0.9, 0.9]
    assert ["<lora:alpha:1>" in c["Prompt"] for c in cells] == [False, True, False, True]
    assert len(r.json()["images"]) == 5
    # the weight-0 cell at 0.3 is exactly a plain img2img of that strength
    plain = client.post("/sdapi/v1/img2img", json={k: v for k, v in body.items() if k not in ("script_name", "script_args")}
                        | {"prompt": "a red circle", "denoising_strength": 0.3})
    assert plain.status_code == 200, plain.text
    assert np.array_equal(pixels(r.json()["images"][1]), pixels(plain.json()["images"][0]))
    body["script_args"] = ["Denoising", "0.5, 1.5", []]
    assert "out of range" in assert_error(client.post("/sdapi/v1/img2img", json=body), 422, "script_args")["detail"]


@pytest.mark.parametrize("args, words", [
    ([5, "2, 3"], "Hires steps' is not supported"),
    ([4, "2, x"], "'x' is not a whole number"),
    ([9, "Euler, Nope"], "Sampler"),
    ([4, "1-3", [], 4, "1-2"], "used twice"),
    ([4, "1-101"], "at most 100"),
    ([4, "149-152"], "beyond the limits"),
])
def test_xyz_bad_axes_are_422(env, client, args, words):
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "x/y/z plot", "script_args": args})
    body = assert_error(r, 422, "script_args")
    assert words in body["detail"], body["detail"]
    assert_error(client.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "outpainting"}), 422, "script_name")
