"""python -m lora_ui.demo train|export|train-loras|evaluate"""
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
