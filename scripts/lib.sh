# shellcheck shell=bash
# Common settings for fetch_etl's scripts. Sourced, not run.
#
# Everything the scripts create outside the clone lives under $FETCH_ETL_STATE
# (Python venv, cargo target dir, test clusters), so a fresh clone on the same
# machine reuses the build cache, and nothing generated ends up in git.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export REPO_ROOT
export FETCH_ETL_STATE=${FETCH_ETL_STATE:-/var/tmp/fetch_etl}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FETCH_ETL_STATE/target}
export VENV=${VENV:-$FETCH_ETL_STATE/venv}

export PG_MAJOR=15
export PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
export PG_CONFIG=$PG_BIN/pg_config
export PGRX_VERSION=0.18.1
export MOTO_VERSION=5.2.5

# Put cargo on PATH for non-login shells (CI).
if [ -d "$HOME/.cargo/bin" ]; then
    case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) export PATH="$HOME/.cargo/bin:$PATH" ;; esac
fi

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Run a command as the postgres OS user (PostgreSQL refuses to run as root).
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres -H -- "$@"; fi
}

# A directory the postgres user owns, for cluster data and sockets.
pg_owned_dir() {
    install -d -m 0700 -o postgres -g postgres "$1"
}
