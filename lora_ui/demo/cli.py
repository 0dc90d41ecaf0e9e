"""Command line of the demo package (`python -m lora_ui.demo ...`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import paths

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m lora_ui.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train (or resume) the demo model and save it to models/")
    p_train.add_argument("--work-dir", type=Path, default=paths.WORK_DIR, help="checkpoints, samples, log")
    p_train.add_argument("--out", type=Path, default=paths.DEMO_MODEL_DIR)
    p_train.add_argument("--vae-steps", type=int)
    p_train.add_argument("--unet-steps", type=int)
    p_train.add_argument("--threads", type=int, default=1)
    p_export = sub.add_parser("export", help="save the EMA model of the latest checkpoint to models/")
    p_export.add_argument("--work-dir", type=Path, default=paths.WORK_DIR)
    p_export.add_argument("--out", type=Path, default=paths.DEMO_MODEL_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(getattr(args, "threads", 1))

    from .train import DemoTrainer, TrainConfig, save_pipeline, train

    if args.command == "train":
        cfg = TrainConfig()
        if args.vae_steps:
            cfg.vae_steps = args.vae_steps
        if args.unet_steps:
            cfg.unet_steps = args.unet_steps
        train(args.work_dir, args.out, cfg)
        print(f"demo model saved to {args.out}")
    elif args.command == "export":
        trainer = DemoTrainer(TrainConfig(), args.work_dir, progress=False)
        if not trainer.load():
            print(f"no checkpoint in {args.work_dir}; run `python -m lora_ui.demo train` first")
            return 1
        save_pipeline(trainer.pipeline(), args.out)
        print(f"exported stage {trainer.stage} step {trainer.step} to {args.out}")
    return 0
