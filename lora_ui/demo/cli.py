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
    p_train.add_argument("--ema-decay", type=float)
    p_train.add_argument("--unet-lr", type=float, help="peak learning rate of the UNet (the text encoder's is half)")
    p_train.add_argument("--offset-noise", type=float, help="offset-noise strength (e.g. 0.1; default 0)")
    p_train.add_argument("--threads", type=int, default=1)
    p_export = sub.add_parser("export", help="save the EMA model of the latest checkpoint to models/")
    p_export.add_argument("--work-dir", type=Path, default=paths.WORK_DIR)
    p_export.add_argument("--out", type=Path, default=paths.DEMO_MODEL_DIR)
    p_loras = sub.add_parser("train-loras", help="train the demo LoRAs on the demo model (models/Lora/demo/)")
    p_loras.add_argument("--model", type=Path, default=paths.DEMO_MODEL_DIR)
    p_loras.add_argument("--out", type=Path, default=paths.DEMO_LORA_DIR)
    p_loras.add_argument("--only", nargs="*", help="names of the demo LoRAs to train (default: all)")
    p_loras.add_argument("--steps", type=int, help="override every LoRA's step count")
    p_loras.add_argument("--lr", type=float, help="override every LoRA's learning rate")
    p_loras.add_argument("--init-dir", type=Path, help="continue from same-named LoRA files in this folder")
    p_eval = sub.add_parser("evaluate", help="score the demo model and LoRAs with the world's classifier")
    p_eval.add_argument("--model", type=Path, default=paths.DEMO_MODEL_DIR)
    p_eval.add_argument("--loras", type=Path, default=paths.DEMO_LORA_DIR)
    p_eval.add_argument("--json", type=Path, help="write the numbers here (default: <model>/evaluation.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(getattr(args, "threads", 1))

    from .train import DemoTrainer, TrainConfig, save_pipeline, train

    if args.command == "train":
        cfg = TrainConfig()
        if args.vae_steps:
            cfg.vae_steps = args.vae_steps
        if args.unet_steps:
            cfg.unet_steps = args.unet_steps
        if args.ema_decay:
            cfg.ema_decay = args.ema_decay
        if args.offset_noise is not None:
            cfg.offset_noise = args.offset_noise
        if args.unet_lr:
            cfg.unet_lr, cfg.te_lr = args.unet_lr, args.unet_lr / 2
        train(args.work_dir, args.out, cfg)
        print(f"demo model saved to {args.out}")
    elif args.command == "export":
        trainer = DemoTrainer(TrainConfig(), args.work_dir, progress=False)
        if not trainer.load():
            print(f"no checkpoint in {args.work_dir}; run `python -m lora_ui.demo train` first")
            return 1
        save_pipeline(trainer.pipeline(), args.out)
        print(f"exported stage {trainer.stage} step {trainer.step} to {args.out}")
    elif args.command in ("train-loras", "evaluate"):
        from . import DemoModelMissing, check_demo_model

        try:
            check_demo_model(args.model)
        except DemoModelMissing as exc:
            print(exc)
            return 1
        if args.command == "train-loras":
            return _train_loras(args)
        from .evaluate import main as evaluate_main

        from .card import write_model_card

        result = evaluate_main(args.model, args.loras, args.json or args.model / "evaluation.json")
        print(f"model card: {write_model_card(args.model, result)}")
    return 0


def _train_loras(args) -> int:
    from .evaluate import load_demo_pipeline
    from .lora_train import DEMO_LORAS, train_and_save
    from .train import log

    names = args.only or list(DEMO_LORAS)
    unknown = [n for n in names if n not in DEMO_LORAS]
    if unknown:
        print(f"unknown demo LoRA(s) {unknown}; known: {sorted(DEMO_LORAS)}")
        return 1
    pipe = load_demo_pipeline(args.model)
    work = paths.WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    for name in names:
        path, losses = train_and_save(pipe, DEMO_LORAS[name], args.out, steps=args.steps,
                                      log=lambda m: log(work, m), init_dir=args.init_dir, lr=args.lr)
        print(f"{name}: saved {path} (loss {sum(losses[:20]) / 20:.4f} -> {sum(losses[-20:]) / 20:.4f})")
    return 0
