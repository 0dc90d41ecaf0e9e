"""webui.py: every flag documented in --help, usage errors, a bad --ckpt, and a real launch serving the
page and the API with images saved under <data-dir>/outputs."""
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--data-dir", "--ckpt", "--ckpt-dir", "--lora-dir", "--listen", "--port", "--autolaunch", "--api",
         "--gradio-auth", "--api-auth", "--device", "--precision", "--no-half", "--allow-pickle", "--desktop"]


def run_webui(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "webui.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_help_lists_every_flag_with_its_help_text():
    from lora_ui.settings import build_parser

    out = run_webui("--help", timeout=60)
    assert out.returncode == 0
    for flag in FLAGS:
        assert flag in out.stdout, f"{flag} missing from --help"
    documented = {o for a in build_parser()._actions if a.help and a.help.strip() for o in a.option_strings}
    assert set(FLAGS) <= documented
    assert "auto,cuda,mps,cpu" in out.stdout.replace(" ", "") and "fp16" in out.stdout


def test_usage_errors_name_the_flag():
    out = run_webui("--gradio-auth", "justaname", timeout=60)
    assert out.returncode == 2
    assert "--gradio-auth: 'justaname' is not user:password" in out.stderr
    out = run_webui("--precision", "fp8", timeout=60)
    assert out.returncode == 2 and "invalid choice: 'fp8'" in out.stderr


def test_security_warnings_when_listening_without_auth():
    from webui import security_warnings

    open_ = SimpleNamespace(listen=True, gradio_auth=[], api=True, api_auth=[])
    assert len(security_warnings(open_)) == 2
    closed = SimpleNamespace(listen=True, gradio_auth=[("a", "b")], api=True, api_auth=[("c", "d")])
    assert security_warnings(closed) == []
    assert security_warnings(SimpleNamespace(listen=False, gradio_auth=[], api=True, api_auth=[])) == []
    # the UI's password covers the API when the API has none of its own
    assert security_warnings(SimpleNamespace(listen=True, gradio_auth=[("a", "b")], api=True, api_auth=[])) == []


def test_a_missing_checkpoint_stops_the_start_with_one_clear_message(tmp_path):
    out = run_webui("--data-dir", str(tmp_path), "--ckpt", str(tmp_path / "nope.safetensors"))
    assert out.returncode == 2
    assert "Cannot load the checkpoint: Checkpoint not found:" in out.stderr
    assert "Traceback" not in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, data=None, timeout=60):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def _wait_until_up(proc, base, log_path, seconds=540):
    deadline = time.time() + seconds  # generous: the shared test machines can be very busy
    while True:  # the API routes are added right after the page comes up: wait for both
        try:
            status, page = _get(base + "/", timeout=5)
            _get(base + "/sdapi/v1/samplers", timeout=5)
            return status, page
        except OSError:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, f"the UI did not come up in {seconds} s"
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_launch_serves_the_page_and_the_api_saves_images_and_stops_cleanly(tmp_path, stop_signal):
    """A real start, one render through the API, then Ctrl+C (SIGINT) or `kill` (SIGTERM): exit status 0,
    no abort ('terminate called ...', status 134), no traceback, and no child process left behind."""
    import psutil
    from PIL import Image

    from lora_ui.infotext import read_infotext

    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_TEMP_DIR=str(tmp_path / "gradio-tmp"), PYTHONFAULTHANDLER="1")
    log_path = tmp_path / "webui.log"
    log = open(log_path, "w")
    # SIGINT must reach Python's default handler whatever the shell that started pytest did with it.
    proc = subprocess.Popen([sys.executable, str(ROOT / "webui.py"), "--data-dir", str(tmp_path), "--port", str(port),
                             "--api"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    base = f"http://127.0.0.1:{port}"
    try:
        status, page = _wait_until_up(proc, base, log_path)
        assert status == 200 and b"<html" in page.lower()
        try:
            status, body = _get(base + "/sdapi/v1/txt2img",
                                {"prompt": "a cat", "steps": 1, "seed": 77, "sampler_name": "Euler", "save_images": True})
        except OSError as e:
            raise AssertionError(f"{e}\n{log_path.read_text()[-3000:]}") from None
        assert status == 200
        image = Image.open(io.BytesIO(base64.b64decode(json.loads(body)["images"][0])))
        assert image.size[0] % 8 == 0 and image.size[0] >= 16
        saved = tmp_path / "outputs" / "txt2img-images" / date.today().isoformat() / "00000-77.png"
        assert saved.is_file()
        assert "Seed: 77" in read_infotext(saved)

        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(stop_signal)
        code = proc.wait(timeout=120)
        output = log_path.read_text()
        assert code == 0, output[-3000:]
        assert "terminate called" not in output and "Traceback" not in output, output[-3000:]
        assert "LoRA UI stopped" in output and "did not finish" not in output, output[-3000:]
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"child processes outlived the server: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
