#!/usr/bin/env bash
# apt_install.sh WHO PACKAGE...: install Debian packages through apt for a script of this repo
# (WHO names it in the errors). Needs root or passwordless sudo; exits 2, saying why, when it
# cannot install.
set -euo pipefail
who="$1"; shift
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "$who: not root and no passwordless sudo: cannot apt-get install $*" >&2
    exit 2
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "$who: no apt-get on this machine: install $* yourself" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
