"""A missing or damaged demo model gives a clear message with the rebuild command, never a traceback."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_ui.demo import DemoModelMissing, check_demo_model

ROOT = Path(__file__).resolve().parents[2]
REBUILD = "python -m lora_ui.demo train"


def fake_model(root: Path) -> Path:
    """A structurally complete (tiny, random) demo folder: what check_demo_model inspects."""
    for comp, weight in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                         ("text_encoder", "model.safetensors")):
        (root / comp).mkdir(parents=True)
        (root / comp / "config.json").write_text("{}")
        save_file({"w": torch.zeros(4, 4, dtype=torch.float16)}, str(root / comp / weight))
    shutil.copytree(ROOT / "lora_ui" / "engine" / "configs" / "clip_tokenizer", root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def test_complete_folder_passes(tmp_path):
    assert check_demo_model(fake_model(tmp_path / "m")) is None


def test_missing_folder(tmp_path):
    with pytest.raises(DemoModelMissing, match="does not exist") as e:
        check_demo_model(tmp_path / "nope")
    assert REBUILD in str(e.value)


@pytest.mark.parametrize("victim", ["unet/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json",
                                    "model_index.json", "scheduler/scheduler_config.json"])
def test_missing_file_is_named(tmp_path, victim):
    root = fake_model(tmp_path / "m")
    (root / victim).unlink()
    with pytest.raises(DemoModelMissing) as e:
        check_demo_model(root)
    assert victim.split("/")[-1] in str(e.value) and REBUILD in str(e.value)


def test_truncated_weights_are_reported(tmp_path):
    root = fake_model(tmp_path / "m")
    f = root / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DemoModelMissing, match="damaged.*truncated") as e:
        check_demo_model(root)
    assert REBUILD in str(e.value)


def test_garbage_weights_and_json_are_reported(tmp_path):
    root = fake_model(tmp_path / "m")
    (root / "text_encoder" / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(DemoModelMissing, match="model.safetensors"):
        check_demo_model(root)
    root2 = fake_model(tmp_path / "m2")
    (root2 / "unet" / "config.json").write_text("{not json")
    with pytest.raises(DemoModelMissing, match="config.json"):
        check_demo_model(root2)


def test_cli_prints_the_message_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lora_ui.demo", "evaluate", "--model", str(tmp_path / "gone")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert REBUILD in r.stdout and "Traceback" not in r.stdout + r.stderr
