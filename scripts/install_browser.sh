#!/usr/bin/env bash
# The browser the labelling-view tests drive: Debian's chromium and its chromedriver, through apt.
# Called by .ci/run and by tests/browser.py when /usr/bin/chromium or /usr/bin/chromedriver is
# missing; needs root (or passwordless sudo). Exits non-zero, saying why, when it cannot install.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_browser.sh: not root and no passwordless sudo: cannot apt-get install chromium chromium-driver" >&2
    exit 2
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "install_browser.sh: no apt-get on this machine: install chromium and chromedriver yourself" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
test -x /usr/bin/chromium && test -x /usr/bin/chromedriver
