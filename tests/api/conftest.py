"""A real API server on localhost for the tests in tests/api/.

One session-wide environment: two tiny SD1 checkpoints saved as diffusers folders (tiny-a is loaded,
tiny-b is there to switch to), eight tiny kohya LoRA files made on the tiny model's own module names,
a real ModelManager, LoRA library, Worker and txt2img, served by uvicorn in a thread on a free port
(once without auth, once with `--api-auth user:secret`).
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from safetensors.torch import save_file

LORA_NAMES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
AUTH = ("user", "secret")
EXPLODE = "__explode_in_render__"  # a prompt containing this makes the render raise (500 test)


def kohya_lora(pipe, seed: int, rank: int = 4, scale: float = 0.6) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA for every attention projection of the UNet and the text encoder's q/v.

    Keys: `lora_unet_<module path, '.' -> '_'>.{lora_down.weight (r, in), lora_up.weight (out, r), alpha}`
    and `lora_te_text_model_encoder_layers_<i>_self_attn_{q,v}_proj.*`; fp16 as trainers save them."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def add(prefix: str, module: torch.nn.Linear) -> None:
        down = torch.randn(rank, module.in_features, generator=gen) * scale
        up = torch.randn(module.out_features, rank, generator=gen) * scale
        sd[f"{prefix}.lora_down.weight"] = down.half()
        sd[f"{prefix}.lora_up.weight"] = up.half()
        sd[f"{prefix}.alpha"] = torch.tensor(float(rank)).half()

    for name, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(s) for s in ("to_q", "to_k", "to_v", "to_out.0")):
            add("lora_unet_" + name.replace(".", "_"), module)
    for i, layer in enumerate(pipe.text_encoder.encoder.layers):  # transformers 5: no text_model level
        add(f"lora_te_text_model_encoder_layers_{i}_self_attn_q_proj", layer.self_attn.q_proj)
        add(f"lora_te_text_model_encoder_layers_{i}_self_attn_v_proj", layer.self_attn.v_proj)
    return sd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 120
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test API server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class ApiEnv:
    root: Path
    ctx: SimpleNamespace
    url: str
    auth_url: str
    lora_dir: Path
    render_calls: list

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=600, **kwargs)


@pytest.fixture(scope="session")
def api_env(tmp_path_factory):
    from fastapi import FastAPI

    from lora_ui.api import create_api
    from lora_ui.engine import devices, txt2img
    from lora_ui.engine.checkpoints import ModelManager
    from lora_ui.engine.worker import Worker
    from lora_ui.library import LoraLibrary
    from lora_ui.testing.tiny_models import tiny_sd1_pipeline

    root = tmp_path_factory.mktemp("api")
    ckpts = root / "Stable-diffusion"
    lora_dir = root / "Lora"
    lora_dir.mkdir(parents=True)
    pipe_a = tiny_sd1_pipeline(0)
    pipe_a.save_pretrained(ckpts / "tiny-a")
    tiny_sd1_pipeline(5).save_pretrained(ckpts / "tiny-b")
    for i, name in enumerate(LORA_NAMES):
        save_file(kohya_lora(pipe_a, seed=100 + i), str(lora_dir / f"{name}.safetensors"),
                  metadata={"ss_output_name": name, "ss_network_dim": "4"})
    del pipe_a

    settings = SimpleNamespace(ckpt_dirs=[ckpts], allow_pickle=False, demo_model_dir=root / "no-demo-model",
                               api_max_size=256, api_max_steps=60, api_max_batch_size=4, api_max_batch_count=4)
    models = ModelManager(settings, device_choice=devices.choose("cpu", "fp32"))
    models.switch("tiny-a")
    library = LoraLibrary([lora_dir], cache_dir=root / "cache")
    library.refresh()
    render_calls: list = []

    def generate(model, req, **kwargs):
        render_calls.append(req.prompt)
        if EXPLODE in req.prompt:
            raise RuntimeError("the render exploded (injected by the test)")
        return txt2img.generate(model, req, **kwargs)

    worker = Worker.for_model_manager(models, library=library, outputs_dir=root / "outputs", generate=generate)
    ctx = SimpleNamespace(settings=settings, models=models, library=library, worker=worker)
    open_app, auth_app = FastAPI(), FastAPI()
    apis = [create_api(open_app, ctx, None), create_api(auth_app, ctx, [AUTH, ("other", "pw2")])]
    servers = [ServerThread(open_app), ServerThread(auth_app)]
    yield ApiEnv(root=root, ctx=ctx, url=servers[0].url, auth_url=servers[1].url, lora_dir=lora_dir,
                 render_calls=render_calls)
    for server in servers:
        server.stop()
    worker.shutdown()
    for api in apis:
        api.close()


@pytest.fixture
def client(api_env):
    with api_env.client() as c:
        yield c
