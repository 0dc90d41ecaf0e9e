#!/usr/bin/env bash
# Launches the UI on http://127.0.0.1:7860 with the embedded demo model; sets up .venv on first run.
# Flags go to webui.py (./webui.sh --help lists them).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/ensure_venv.sh requirements.txt
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1
exec .venv/bin/python webui.py "$@"
