#!/usr/bin/env bash
# The whole test suite, from a fresh machine: sets up .venv (torch 2.13.0 pinned) with the test
# needs, installs Debian's chromium for the browser tests when it is missing, runs pytest.
# Extra arguments go to pytest, e.g. ./run_tests.sh tests/lora -x
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/ensure_venv.sh requirements-test.txt
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's chromium for the browser tests"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "[setup] /usr/bin/chromium is missing: install Debian's 'chromium' package (as root:" \
         "apt-get install chromium); the browser tests will fail without it." >&2
  fi
fi
if ! command -v Xvfb >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Xvfb for the --desktop window test"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xvfb >/dev/null
  else
    echo "[setup] Xvfb is missing: install Debian's 'xvfb' package (as root: apt-get install xvfb);" \
         "the desktop window test will fail without it." >&2
  fi
fi
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False NO_PROXY=127.0.0.1,localhost
exec .venv/bin/python -m pytest "$@"
