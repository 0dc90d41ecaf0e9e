"""--ray flags (no Ray needed): parsed, validated, and off by default (today's Worker untouched)."""
import pytest

from lora_ui.settings import SettingsError, build_parser, Settings


def _settings(*argv):
    return Settings.from_args(build_parser().parse_args(list(argv)), load_config=False)


def test_ray_is_off_by_default_and_flags_parse():
    s = _settings()
    assert (s.ray, s.ray_address, s.ray_replicas, s.ray_max_replicas) == (False, None, None, None)
    s = _settings("--ray-address", "ray://head:10001", "--ray-replicas", "2", "--ray-max-replicas", "8")
    assert (s.ray, s.ray_address, s.ray_replicas, s.ray_max_replicas) == (True, "ray://head:10001", 2, 8)
    assert _settings("--ray").ray
    with pytest.raises(SettingsError):
        _settings("--ray", "--ray-replicas", "0")
    with pytest.raises(SettingsError):
        _settings("--ray", "--ray-replicas", "4", "--ray-max-replicas", "2")


def test_without_ray_the_app_builds_todays_worker(tmp_path):
    from lora_ui.app import build_worker
    from lora_ui.engine.worker import Worker

    s = _settings("--data-dir", str(tmp_path))
    worker = build_worker(s, models=type("M", (), {"require": None, "switch": None})(), library=None)
    try:
        assert type(worker) is Worker and worker.batching is None
    finally:
        assert worker.shutdown()


def test_replica_argv_carries_the_model_flags(tmp_path):
    from lora_ui.scale.ray_backend import replica_argv  # imports no Ray

    s = _settings("--data-dir", str(tmp_path), "--lora-dir", str(tmp_path / "l"), "--allow-pickle")
    argv = replica_argv(s)
    assert argv[:2] == ["--data-dir", str(tmp_path)] and "--allow-pickle" in argv and str(tmp_path / "l") in argv
    again = _settings(*argv)
    assert again.lora_dirs == s.lora_dirs and again.allow_pickle


def test_without_ray_installed_the_app_renders(tmp_path):
    """`--ray` off: the default path never imports Ray (it is blocked here as if not installed)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['ray'] = None\n"  # any `import ray` now raises ImportError
        "from lora_ui.settings import Settings, build_parser\n"
        "from lora_ui.app import AppContext\n"
        "from lora_ui.engine.txt2img import Txt2ImgRequest\n"
        f"s = Settings.from_args(build_parser().parse_args(['--data-dir', {str(tmp_path)!r}]), load_config=False)\n"
        "ctx = AppContext.build(s)\n"
        "try:\n"
        "    r = ctx.worker.txt2img(Txt2ImgRequest(prompt='a red circle', steps=2, seed=1, save_images=False))\n"
        "    print('images', len(r.result(timeout=300).images))\n"
        "finally:\n"
        "    assert ctx.close()\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=root,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0 and "images 1" in out.stdout, out.stderr[-3000:]
