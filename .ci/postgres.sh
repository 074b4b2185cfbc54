#!/usr/bin/env bash
# PostgreSQL server binaries for tests/test_postgres.py (a throw-away server on 127.0.0.1 that
# the tests start and stop themselves).  Installs Debian's `postgresql` package when no
# /usr/lib/postgresql/*/bin/initdb exists; quiet, and always exits 0: where nothing can be
# installed, the PostgreSQL tests skip and say why.
set -u
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "postgres.sh: no apt-get here; PostgreSQL tests will skip" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "postgres.sh: not root and no password-less sudo; PostgreSQL tests will skip" >&2
        exit 0
    fi
fi
if ! { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1; }; then
    echo "postgres.sh: installing postgresql failed; PostgreSQL tests will skip" >&2
fi
exit 0
