#!/usr/bin/env bash
# The browser the labelling-view tests drive: Debian's chromium and its chromedriver, through apt.
# Called by .ci/run and by tests/browser.py when /usr/bin/chromium or /usr/bin/chromedriver is
# missing; needs root (or passwordless sudo). Exits non-zero, saying why, when it cannot install.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
bash "$(dirname "$0")/apt_install.sh" install_browser.sh chromium chromium-driver
test -x /usr/bin/chromium && test -x /usr/bin/chromedriver
