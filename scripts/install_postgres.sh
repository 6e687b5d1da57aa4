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
bash "$(dirname "$0")/apt_install.sh" install_postgres.sh postgresql
have_binaries
