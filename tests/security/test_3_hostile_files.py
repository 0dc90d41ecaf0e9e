"""Item 3: one hostile file costs only its own card; the library lists, start-up goes on."""
from __future__ import annotations

import os
import threading

import pytest
from safetensors.torch import save_file

from lora_ui.library import LoraLibrary
from lora_ui.lora.manager import LoraManager
from lora_ui.lora.spec import LoraError, LoraSpec
from lora_ui.ui.lora_browser import PLACEHOLDER_SVG, ThumbnailCache
from tests.api.conftest import kohya_lora
from tests.security.helpers import bomb_png, unblock_fifo

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def hostile_folder(tmp_path, api_env):
    folder = tmp_path / "Lora"
    folder.mkdir()
    pipe = api_env.ctx.models.current.pipe
    for name in ("good", "bomb", "zero", "changed"):
        save_file(kohya_lora(pipe, seed=1), str(folder / f"{name}.safetensors"))
    bomb_png(folder / "bomb.preview.png")
    (folder / "zero.json").symlink_to("/dev/zero")
    (folder / "zero.txt").symlink_to("/dev/zero")
    fifos = [folder / "fifo.safetensors", folder / "good.json"]
    for fifo in fifos:
        os.mkfifo(fifo)
    yield folder
    for fifo in fifos:  # the old code blocks in open() on these: give it EOF so its thread ends
        unblock_fifo(fifo)


def _refresh_bounded(library, seconds=20.0):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("report", library.refresh()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "refresh hung on a hostile file"
    return box["report"]


def test_library_lists_every_file_with_hostile_neighbours(hostile_folder, tmp_path):
    library = LoraLibrary([hostile_folder], cache_dir=tmp_path / "cache", max_workers=1)
    _refresh_bounded(library)
    by_name = {e.name: e for e in library.entries}
    assert {"good", "bomb", "zero", "changed", "fifo"} <= set(by_name)
    assert not by_name["good"].broken and not by_name["zero"].broken and not by_name["bomb"].broken
    assert by_name["fifo"].broken and "FIFO" in by_name["fifo"].error
    assert any("good.json" in w for w in by_name["good"].warnings)        # the FIFO sidecar: a warning only
    assert any("zero.json" in w for w in by_name["zero"].warnings)        # /dev/zero: refused, not read
    # the bomb preview: the card shows the placeholder, the grid is built
    assert ThumbnailCache().data_uri(by_name["bomb"].preview) == PLACEHOLDER_SVG
    assert ThumbnailCache().data_uri(b"\x89PNG" + (hostile_folder / "bomb.preview.png").read_bytes()[4:]) == PLACEHOLDER_SVG


def test_lora_overwritten_after_refresh_is_a_clear_error(hostile_folder, tmp_path, api_env):
    library = LoraLibrary([hostile_folder], cache_dir=tmp_path / "cache", max_workers=1)
    _refresh_bounded(library)
    path = library.resolve("changed").path
    path.write_bytes((2**63).to_bytes(8, "little") + b"{}")  # a header length that cannot be allocated
    manager = LoraManager(api_env.ctx.models.current.pipe)
    with pytest.raises(LoraError, match="changed.safetensors.*corrupt or not a safetensors file"):
        manager.set_loras([LoraSpec(path, "changed")])
    manager.clear()
