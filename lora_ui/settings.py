"""Settings: the command-line flags (A1111 names) plus the UI settings kept in `<data-dir>/config.json`.

Paths (A1111 layout under the data dir, which defaults to the repository):
    checkpoints  <data-dir>/models/Stable-diffusion    (--ckpt-dir replaces it)
    LoRAs        <data-dir>/models/Lora, <data-dir>/models/LyCORIS   (--lora-dir, repeatable, replaces them)
    outputs      <data-dir>/outputs                     (UI setting "outputs_dir"; relative -> under data dir)
    config       <data-dir>/config.json                 (UI settings; keys this app does not know are kept)
    cache        <data-dir>/cache                       (LoRA library cache)
The demo model always lives in the repository (models/Stable-diffusion/lora-ui-demo/).

No gradio and no torch here.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lora_ui.limits import DEFAULT as DEFAULT_LIMITS
from lora_ui.limits import Limits
from lora_ui.limits import add_flags as add_limit_flags
from lora_ui.limits import from_args as limits_from_args

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL_DIR = REPO_ROOT / "models" / "Stable-diffusion" / "lora-ui-demo"
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")          # same as lora_ui.engine.devices (no torch import here)
PRECISION_CHOICES = ("auto", "fp16", "bf16", "fp32")


class SettingsError(ValueError):
    """A flag or a config.json value is invalid; the message names it and says what is allowed."""


def parse_auth(text: str | None, flag: str = "--gradio-auth") -> list[tuple[str, str]]:
    """"user:pass[,user2:pass2]" -> [("user", "pass"), ...] (A1111's format; the password may hold ':')."""
    if text is None or not text.strip():
        return []
    pairs = []
    for item in text.split(","):
        item = item.strip()
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise SettingsError(f"{flag}: {item!r} is not user:password (several: user1:pass1,user2:pass2)")
        pairs.append((user, password))
    return pairs


# UI settings (config.json): name -> (default, check(value) -> normalised value or raises ValueError)
def _float_in(low: float, high: float):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
            raise ValueError(f"must be a number from {low:g} to {high:g}")
        return float(v)
    return check


def _int_in(low: int, high: int):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or not low <= v <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return int(v)
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _text(v):
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a non-empty text")
    return v.strip()


def _relative_folder(v):
    """A folder under the data dir: relative, without '..' (an operator who wants images elsewhere
    says so on the command line with --outputs-dir)."""
    text = _text(v)
    parts = Path(text).parts
    if Path(text).is_absolute() or text.startswith("~") or ".." in parts or "\x00" in text:
        raise ValueError("must be a folder inside the data dir (relative, no '..'); use --outputs-dir for "
                         "another place")
    return text


def _optional_text(v):
    if v is None:
        return None
    return _text(v)


UI_SETTINGS: dict[str, tuple[Any, Any]] = {
    "default_lora_weight": (1.0, _float_in(-2.0, 2.0)),
    "card_size": (160, _int_in(64, 512)),
    "outputs_dir": ("outputs", _relative_folder),
    "add_lora_hashes_to_infotext": (True, _bool),
    "clip_skip": (1, _int_in(1, 12)),
    "sd_model_checkpoint": (None, _optional_text),
    "sd_vae": ("Automatic", _text),
}


@dataclass
class Settings:
    """Everything the app is configured with. Build with `Settings.from_args(build_parser().parse_args())`."""

    data_dir: Path = REPO_ROOT
    ckpt: str | None = None
    ckpt_dirs: list[Path] = field(default_factory=list)
    lora_dirs: list[Path] = field(default_factory=list)
    listen: bool = False
    port: int = 7860
    autolaunch: bool = False
    api: bool = False
    gradio_auth: list[tuple[str, str]] = field(default_factory=list)
    api_auth: list[tuple[str, str]] = field(default_factory=list)
    device: str = "auto"
    precision: str = "auto"
    no_half: bool = False
    allow_pickle: bool = False
    # Ray backend (off by default; docs/scale-out.md)
    ray: bool = False
    ray_address: str | None = None   # None + ray: a local Ray; "auto" / "ray://head:10001": join a cluster
    ray_replicas: int | None = None  # None: one per GPU of the cluster (1 without GPUs)
    ray_max_replicas: int | None = None  # > ray_replicas: Serve autoscaling between the two
    demo_model_dir: Path = DEMO_MODEL_DIR
    outputs_dir_cli: Path | None = None     # --outputs-dir: the operator's choice, anywhere on disk
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    desktop: bool = False                   # --desktop: own app window (lora_ui.desktop), one server per data dir
    checkpoint_cache: int = 1               # --checkpoint-cache: loaded checkpoints kept (A1111's default 1)
    vae_dirs: list[Path] = field(default_factory=list)         # --vae-dir (default <data-dir>/models/VAE)
    embeddings_dirs: list[Path] = field(default_factory=list)  # --embeddings-dir (default <data-dir>/embeddings)
    # UI settings (config.json)
    default_lora_weight: float = 1.0
    card_size: int = 160
    outputs_dir: str = "outputs"
    add_lora_hashes_to_infotext: bool = True
    clip_skip: int = 1
    sd_model_checkpoint: str | None = None
    sd_vae: str = "Automatic"
    config_extra: dict[str, Any] = field(default_factory=dict)   # config.json keys we do not know: kept as is
    config_warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._config_unreadable: str | None = None  # set by load(): save() must not clobber a broken file
        self.data_dir = Path(self.data_dir).expanduser()
        if not self.ckpt_dirs:
            self.ckpt_dirs = [self.data_dir / "models" / "Stable-diffusion"]
        if not self.lora_dirs:
            self.lora_dirs = [self.data_dir / "models" / "Lora", self.data_dir / "models" / "LyCORIS"]
        if not self.vae_dirs:
            self.vae_dirs = [self.data_dir / "models" / "VAE"]
        if not self.embeddings_dirs:
            self.embeddings_dirs = [self.data_dir / "embeddings"]
        self.ckpt_dirs = [Path(p).expanduser() for p in self.ckpt_dirs]
        self.lora_dirs = [Path(p).expanduser() for p in self.lora_dirs]

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.data_dir / "config.json"

    @property
    def styles_path(self) -> Path:
        """A1111's styles.csv in the data dir."""
        return self.data_dir / "styles.csv"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def outputs_path(self) -> Path:
        """Where every image the app writes goes (txt2img, grids, compare): --outputs-dir when given,
        else `outputs_dir` (config.json) under the data dir. A config value that would leave the data
        dir (absolute, '..', a symlink out) is not used: <data-dir>/outputs instead."""
        if self.outputs_dir_cli is not None:
            return Path(self.outputs_dir_cli).expanduser()
        default = self.data_dir / "outputs"
        try:
            relative = _relative_folder(self.outputs_dir)
        except ValueError:
            return default
        target = self.data_dir / relative
        try:
            inside = target.resolve().is_relative_to(self.data_dir.resolve())
        except (OSError, RuntimeError):
            inside = False
        return target if inside else default

    @property
    def server_name(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"

    # ------------------------------------------------------------------ CLI
    @classmethod
    def from_args(cls, args: argparse.Namespace, *, load_config: bool = True) -> "Settings":
        """Settings from parsed flags; then config.json (UI settings) from the data dir."""
        if args.precision not in ("auto", "fp32") and args.no_half:
            raise SettingsError(f"--no-half means fp32 but --precision {args.precision} was also given; drop one")
        data_dir = Path(args.data_dir).expanduser() if args.data_dir else REPO_ROOT
        if args.data_dir and not data_dir.is_dir():
            raise SettingsError(f"--data-dir {data_dir} does not exist or is not a folder")
        if not 1 <= args.port <= 65535:
            raise SettingsError(f"--port {args.port} is not a port number (1-65535)")
        settings = cls(
            data_dir=data_dir,
            ckpt=args.ckpt,
            ckpt_dirs=[Path(args.ckpt_dir)] if args.ckpt_dir else [],
            lora_dirs=[Path(p) for p in args.lora_dir or []],
            listen=args.listen,
            port=args.port,
            autolaunch=args.autolaunch,
            api=args.api,
            gradio_auth=parse_auth(args.gradio_auth, "--gradio-auth"),
            api_auth=parse_auth(args.api_auth, "--api-auth"),
            device=args.device,
            precision="fp32" if args.no_half else args.precision,
            no_half=args.no_half,
            allow_pickle=args.allow_pickle,
            outputs_dir_cli=Path(args.outputs_dir).expanduser() if getattr(args, "outputs_dir", None) else None,
            limits=_limits_from_args(args),
            ray=bool(args.ray or args.ray_address),
            ray_address=args.ray_address,
            ray_replicas=args.ray_replicas,
            ray_max_replicas=args.ray_max_replicas,
            desktop=bool(getattr(args, "desktop", False)),
            checkpoint_cache=_checkpoint_cache(getattr(args, "checkpoint_cache", 1)),
            vae_dirs=[Path(p) for p in getattr(args, "vae_dir", None) or []],
            embeddings_dirs=[Path(getattr(args, "embeddings_dir"))] if getattr(args, "embeddings_dir", None) else [],
        )
        if args.ray_replicas is not None and args.ray_replicas < 1:
            raise SettingsError(f"--ray-replicas must be at least 1, got {args.ray_replicas}")
        if args.ray_max_replicas is not None and args.ray_max_replicas < (args.ray_replicas or 1):
            raise SettingsError("--ray-max-replicas must be at least --ray-replicas")
        if load_config:
            settings.load()
        return settings

    # ------------------------------------------------------------------ config.json
    def ui_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in UI_SETTINGS}

    def load(self) -> None:
        """Read config.json: known keys that pass their check are applied; a bad value keeps its default
        with a warning (in `config_warnings` and the log); unknown keys are kept for `save`. A missing
        file is fine; an unreadable one leaves every setting at its default and is never overwritten
        silently (save() refuses until it is fixed or removed)."""
        self.config_warnings = []
        path = self.config_path
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("the top level is not a JSON object")
        except (OSError, ValueError) as e:
            self._config_unreadable = f"{path} is not valid JSON ({e}); fix or delete it"
            self.config_warnings.append(self._config_unreadable)
            log.warning(self._config_unreadable)
            return
        self._config_unreadable = None
        for key, value in data.items():
            if key not in UI_SETTINGS:
                self.config_extra[key] = value
                continue
            try:
                setattr(self, key, UI_SETTINGS[key][1](value))
            except ValueError as e:
                msg = f"{path}: {key} {e} (got {value!r}); using {getattr(self, key)!r}"
                self.config_warnings.append(msg)
                log.warning(msg)

    def save(self) -> Path:
        """Write the UI settings (checked) plus the kept unknown keys to config.json, atomically.
        Raises SettingsError naming the bad value; then nothing is written."""
        if self._config_unreadable:
            raise SettingsError(f"not saving: {self._config_unreadable}")
        values = {}
        for key, (_, check) in UI_SETTINGS.items():
            try:
                values[key] = check(getattr(self, key))
            except ValueError as e:
                raise SettingsError(f"{key} {e} (got {getattr(self, key)!r})") from None
        data = {**self.config_extra, **values}
        path = self.config_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=False)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for key, value in values.items():
            setattr(self, key, value)
        return path


def _checkpoint_cache(value) -> int:
    if value is None:
        return 1
    if not 1 <= int(value) <= 16:
        raise SettingsError(f"--checkpoint-cache {value}: keep 1 to 16 loaded checkpoints")
    return int(value)


def _limits_from_args(args: argparse.Namespace) -> Limits:
    try:
        return limits_from_args(args)
    except ValueError as e:
        raise SettingsError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """webui.py's flags, named as in A1111 where A1111 has them."""
    p = argparse.ArgumentParser(
        prog="webui.py",
        description="LoRA UI: an AUTOMATIC1111-style web UI for using LoRAs with Stable Diffusion (diffusers).",
    )
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="base folder for models/, outputs/, config.json and cache/ (A1111 layout); "
                        "point it at an existing A1111 install to use its checkpoints and LoRAs "
                        "(default: this repository)")
    p.add_argument("--ckpt", default=None, metavar="PATH",
                   help="checkpoint to load at start: an A1111 .safetensors file (SD1.x or SDXL), a diffusers "
                        "folder, or a name from the checkpoint folder (default: the embedded demo model)")
    p.add_argument("--ckpt-dir", default=None, metavar="DIR",
                   help="folder with checkpoints (default: <data-dir>/models/Stable-diffusion)")
    p.add_argument("--lora-dir", action="append", default=None, metavar="DIR",
                   help="folder with LoRA/LyCORIS files, searched recursively; repeat for several "
                        "(default: <data-dir>/models/Lora and <data-dir>/models/LyCORIS)")
    p.add_argument("--listen", action="store_true",
                   help="serve on 0.0.0.0 so other machines on the network can connect (use with --gradio-auth)")
    p.add_argument("--port", type=int, default=7860, help="port of the web UI (default: 7860)")
    p.add_argument("--autolaunch", action="store_true", help="open the UI in the system's browser at start")
    p.add_argument("--desktop", action="store_true",
                   help="open the UI in its own window (Chrome, Chromium, Edge or Brave in app mode, with its own "
                        "profile under <data-dir>/cache); a second start reuses the running server and only opens "
                        "a window; closing the last window stops the server")
    p.add_argument("--api", action="store_true",
                   help="also serve the A1111-compatible REST API under /sdapi/v1 (docs at /docs)")
    p.add_argument("--gradio-auth", default=None, metavar="USER:PASS[,USER2:PASS2]",
                   help="require a login for the web UI")
    p.add_argument("--api-auth", default=None, metavar="USER:PASS[,USER2:PASS2]",
                   help="require HTTP Basic authentication for the REST API")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to run the model: auto (the default) picks cuda, then mps, then cpu")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="weights' precision: auto (the default) is fp16 on cuda/mps and fp32 on cpu (fp16 on cpu is refused)")
    p.add_argument("--no-half", action="store_true", help="A1111's name for --precision fp32")
    p.add_argument("--ray", action="store_true",
                   help="render txt2img on a local Ray Serve deployment (pip install -r requirements-ray.txt; "
                        "see docs/scale-out.md); off by default")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster instead (\"auto\" or ray://head:10001); implies --ray")
    p.add_argument("--ray-replicas", type=int, default=None, metavar="N",
                   help="render replicas (default: one per GPU of the cluster, 1 without GPUs)")
    p.add_argument("--ray-max-replicas", type=int, default=None, metavar="N",
                   help="autoscale the replicas between --ray-replicas and N")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading .ckpt/.pt pickle files (checkpoints and LoRAs); they are read with "
                        "torch's weights-only loader, and a file that needs more (code, classes) is refused")
    p.add_argument("--outputs-dir", default=None, metavar="DIR",
                   help="where images are saved (default: <data-dir>/outputs); only the command line can put "
                        "them outside the data dir")
    p.add_argument("--checkpoint-cache", type=int, default=1, metavar="N",
                   help="how many loaded checkpoints to keep in memory, the current one included (least recently "
                        "used dropped first); switching back to a kept one is instant (default: 1, as A1111)")
    p.add_argument("--vae-dir", action="append", default=None, metavar="DIR",
                   help="folder with VAE files (default: <data-dir>/models/VAE); repeat for several")
    p.add_argument("--embeddings-dir", default=None, metavar="DIR",
                   help="folder with textual-inversion embeddings (default: <data-dir>/embeddings)")
    add_limit_flags(p)
    return p


def settings_from_argv(argv: Sequence[str] | None = None) -> Settings:
    """Parse flags (argparse exits with a usage message on unknown flags) and build Settings;
    a SettingsError is reported through the parser as a usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return Settings.from_args(args)
    except SettingsError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


__all__ = ["Settings", "SettingsError", "build_parser", "parse_auth", "settings_from_argv", "UI_SETTINGS",
]
