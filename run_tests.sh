#!/usr/bin/env bash
# The whole test suite, from a fresh machine: sets up .venv (torch 2.13.0 pinned) with the test
# needs, installs Debian's chromium for the browser tests when it is missing, runs pytest.
# Extra arguments go to pytest, e.g. ./run_tests.sh tests/lora -x
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/ensure_venv.sh requirements-test.txt
# install_debian PACKAGE WHY: apt-get install as root, else say what to install and what fails without it.
install_debian() {
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's $1 for $2"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
  else
    echo "[setup] $1 is missing: install Debian's '$1' package (as root: apt-get install $1);" \
         "$2 will fail without it." >&2
  fi
}
[ -x /usr/bin/chromium ] || install_debian chromium "the browser tests"
command -v Xvfb >/dev/null || install_debian xvfb "the --desktop window test"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False NO_PROXY=127.0.0.1,localhost
exec .venv/bin/python -m pytest "$@"
