#!/usr/bin/env bash
# The PostgreSQL server the catalog tests start (tests/pg.py): Debian's postgresql, through apt.
# Called by .ci/run and by tests/pg.py when initdb or pg_ctl is missing (on $PATH or in
# /usr/lib/postgresql/<major>/bin, where Debian puts them); needs root (or passwordless sudo).
# The tests never use the package's own cluster: they start their own, as the postgres OS user
# the package creates, on a free port. Exits non-zero, saying why, when it cannot install.
set -euo pipefail
have_binaries() {
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    return 0
  fi
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null &&
    compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}
if have_binaries; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_postgres.sh: not root and no passwordless sudo: cannot apt-get install postgresql" >&2
    exit 2
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "install_postgres.sh: no apt-get on this machine: install PostgreSQL (initdb, pg_ctl) yourself" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have_binaries
