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
# The scripts run what is in there (compilers' output, pg_config, the venv)
# as root: under the world-writable /var/tmp, it must be ours alone.
if [ -d "$FETCH_ETL_STATE" ]; then
    if [ "$(stat -c %u "$FETCH_ETL_STATE")" != "$(id -u)" ] ||
        [ $((8#$(stat -c %a "$FETCH_ETL_STATE") & 8#022)) -ne 0 ]; then
        echo "fetch_etl: $FETCH_ETL_STATE is not owned by $(id -un) or is writable by others; refusing to use it" >&2
        exit 1
    fi
fi

# PostgreSQL majors: 15 from Debian 12's packages (the default), 17 and 18
# built from Debian's source packages by scripts/pg-build into
# $FETCH_ETL_STATE/pg/N. FETCH_ETL_PG (or a script's --pg N) picks one.
export PG_DEFAULT_MAJOR=15
export PG_SOURCE_MAJORS="17 18"

# Where major $1's bin/, lib/ and share/ are.
pg_prefix() {
    case "$1" in
    "$PG_DEFAULT_MAJOR") echo "/usr/lib/postgresql/$1" ;;
    *) echo "$FETCH_ETL_STATE/pg/$1" ;;
    esac
}

# Makes major $1 the one the scripts (and the scripts they run) use.
use_pg() {
    case " $PG_DEFAULT_MAJOR $PG_SOURCE_MAJORS " in
    *" $1 "*) ;;
    *) die "PostgreSQL $1 is not supported here (one of: $PG_DEFAULT_MAJOR $PG_SOURCE_MAJORS)" ;;
    esac
    export FETCH_ETL_PG=$1
    export PG_MAJOR=$1
    export PG_BIN
    PG_BIN=$(pg_prefix "$1")/bin
    export PG_CONFIG=$PG_BIN/pg_config
}
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

# The extension's version (the workspace's, Cargo.toml).
crate_version() {
    sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/Cargo.toml" | head -1
}

# Whether the PostgreSQL of pg_config $1 (default: the current major's) has pg_cron.
has_pg_cron() {
    [ -f "$("${1:-$PG_CONFIG}" --pkglibdir)/pg_cron.so" ]
}

# Copies the extension files of a `cargo pgrx package` tree $1 into the
# current major's PostgreSQL (pg_config's paths). The old .so is unlinked
# first: running backends keep it instead of crashing.
install_extension_tree() {
    local so control
    so=$(find "$1" -name fetch_etl.so | head -1)
    control=$(find "$1" -name fetch_etl.control | head -1)
    [ -n "$so" ] && [ -n "$control" ] || die "$1 holds no fetch_etl.so and fetch_etl.control"
    rm -f "$("$PG_CONFIG" --pkglibdir)/fetch_etl.so"
    cp "$so" "$("$PG_CONFIG" --pkglibdir)/"
    cp "$(dirname "$control")"/fetch_etl* "$("$PG_CONFIG" --sharedir)/extension/"
}

use_pg "${FETCH_ETL_PG:-$PG_DEFAULT_MAJOR}"
