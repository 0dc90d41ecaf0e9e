"""Item 7 leftovers: checkpoints that share a name in two folders get unique, selectable titles; with a
data dir elsewhere on disk (neither the working directory nor the system temp dir) every image route
still serves its images, and the files the UI writes go under the data dir."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

pytestmark = pytest.mark.timeout(600)


def test_checkpoints_sharing_a_name_get_unique_selectable_titles(api_env, client):
    settings = api_env.ctx.settings
    original = Path(settings.ckpt_dirs[0]) / "tiny-a"
    other_root = api_env.root / "More-models"
    shutil.copytree(Path(settings.ckpt_dirs[0]) / "tiny-b", other_root / "tiny-a")  # same name, other weights
    settings.ckpt_dirs = [*settings.ckpt_dirs, other_root]
    try:
        listed = client.get("/sdapi/v1/sd-models").json()
        titles = [m["title"] for m in listed]
        assert len(titles) == len(set(titles)), titles
        by_file = {Path(m["filename"]).resolve(): m["title"] for m in listed}
        mine, theirs = by_file[original.resolve()], by_file[(other_root / "tiny-a").resolve()]
        for title, path in ((theirs, other_root / "tiny-a"), (mine, original)):
            r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": title})
            assert r.status_code == 200, r.text
            assert api_env.ctx.models.current.path.resolve() == path.resolve()
            shown = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
            assert shown.rsplit(" [", 1)[0] == title.rsplit(" [", 1)[0]  # (the hash may be known by now)
            assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": shown}).status_code == 200
            assert api_env.ctx.models.current.path.resolve() == path.resolve()
    finally:
        settings.ckpt_dirs = settings.ckpt_dirs[:-1]
        if api_env.ctx.models.current.path.resolve() != original.resolve():
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-a"})
        shutil.rmtree(other_root)
    assert api_env.ctx.models.current.path.resolve() == original.resolve()


def test_every_image_route_serves_from_a_data_dir_elsewhere(tmp_path, monkeypatch):
    """The gallery (saved PNGs and the unsaved ones it writes itself), the sweep grid (a file path) and
    compare images, returned through a launched Gradio app with the app's allowed paths."""
    import gradio as gr
    from gradio_client import Client, handle_file  # noqa: F401

    from lora_ui.settings import Settings
    from lora_ui.ui import core_access as core
    from lora_ui.ui.compare_tab import CompareHandlers
    from lora_ui.ui.txt2img_tab import _gallery_paths
    from tests.api.conftest import free_port

    data = tmp_path / "elsewhere" / "data"
    (tmp_path / "cwd").mkdir()
    (tmp_path / "systmp").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")                        # not the working directory ...
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))  # ... nor the system temp dir
    ctx = SimpleNamespace(settings=Settings(data_dir=data))
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))

    saved = core.outputs_path(ctx) / "txt2img-images" / "00000-1.png"
    saved.parent.mkdir(parents=True)
    red.save(saved)
    unsaved = _gallery_paths(SimpleNamespace(images=[blue], infotexts=["x"], saved_paths=[]), core.ui_temp_dir(ctx))
    grid = CompareHandlers(ctx)._grid_path(7)
    grid.parent.mkdir(parents=True, exist_ok=True)
    red.save(grid)
    for path in (saved, *map(Path, unsaved), grid):  # every file written under the data dir
        assert path.resolve().is_relative_to(data.resolve()), path

    with gr.Blocks() as demo:
        gallery = gr.Gallery(format="png")
        sweep = gr.Image(type="filepath", format="png")
        compare = gr.Image(type="pil", format="png")
        go = gr.Button()
        go.click(lambda: ([str(saved), *unsaved], str(grid), blue), outputs=[gallery, sweep, compare],
                 api_name="render")
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True, share=False, ssr_mode=False,
                            allowed_paths=core.gradio_allowed_paths(ctx.settings))
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        gallery_out, sweep_out, compare_out = client.predict(api_name="/render")
        colors = [Image.open(item["image"]).convert("RGB").getpixel((0, 0)) for item in gallery_out]
        assert colors == [(255, 0, 0), (0, 0, 255)]
        assert Image.open(sweep_out).convert("RGB").getpixel((0, 0)) == (255, 0, 0)
        assert Image.open(compare_out).convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    finally:
        demo.close()


POOL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from lora_ui.library import library as L
from tests.security.helpers import block_in_pool_worker
L.POOL_MIN_FILES_PER_WORKER = 1
L.read_file_record = block_in_pool_worker  # the pool maps this: each worker blocks in its first job
L.LoraLibrary([{lora_dir!r}], cache_dir=None, max_workers=2).refresh()
"""


def test_pool_workers_die_with_a_killed_server(tmp_path):
    """kill -9 of the process that runs the header-reading pool: no worker survives it."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from tests.security.helpers import POOL_MARKER_ENV, wait_until

    lora_dir, markers = tmp_path / "Lora", tmp_path / "markers"
    lora_dir.mkdir()
    markers.mkdir()
    for i in range(40):  # the pool hands out chunks of 8: five chunks, so both workers get one
        (lora_dir / f"l{i}.safetensors").write_bytes(b"x" * 16)
    root = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT.format(root=root, lora_dir=str(lora_dir))],
                              env={**os.environ, POOL_MARKER_ENV: str(markers)})
    workers: list[psutil.Process] = []

    def gone(process: psutil.Process) -> bool:
        try:
            return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    try:
        wait_until(lambda: len(list(markers.iterdir())) == 2, timeout=60, what="both pool workers running")
        workers = [psutil.Process(int(p.name)) for p in markers.iterdir()]
        assert all(w.ppid() == parent.pid for w in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: all(gone(w) for w in workers), timeout=5, what="the orphaned pool workers to exit")
    finally:
        for marker in markers.iterdir():  # on failure: the workers this test started, by pid
            try:
                process = psutil.Process(int(marker.name))
                if not gone(process) and POOL_MARKER_ENV in process.environ():
                    process.kill()
            except psutil.Error:
                pass
        if parent.poll() is None:
            parent.kill()
        parent.wait(10)
