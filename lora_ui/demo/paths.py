"""Where the demo model, the demo LoRAs and the training work files live."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL_DIR = ROOT / "models" / "Stable-diffusion" / "lora-ui-demo"
DEMO_LORA_DIR = ROOT / "models" / "Lora" / "demo"
WORK_DIR = ROOT / "data" / "demo-train"
