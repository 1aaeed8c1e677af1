#!/usr/bin/env bash
# Set up (idempotently) a local PostgreSQL server for Yumen's tests, benchmarks and demos,
# and print its connection string (DSN) as the last line of standard output.
#
#   scripts/setup_postgres.sh [--dir DIR] [--port PORT] [--db NAME] [--user NAME]
#   export YUMEN_TEST_POSTGRES_DSN="$(scripts/setup_postgres.sh | tail -n1)"
#
# Defaults (or environment): --dir $YUMEN_PG_DIR (/var/lib/yumen/pg), --port $YUMEN_PG_PORT
# (5432), --db $YUMEN_PG_DB (yumen_test), --user $YUMEN_PG_USER (yumen).
#
# What it does, each step skipped when already done:
#   1. finds initdb/pg_ctl (PATH, /usr/local/bin, /usr/lib/postgresql/*/bin); as root on
#      Debian it installs the 'postgresql' package when they are missing;
#   2. PostgreSQL refuses to run as root: as root the server runs as the OS user
#      'postgres' (created with useradd if missing); otherwise as the invoking user;
#   3. initializes a cluster in DIR (UTF-8, C collation; local socket peer auth, TCP
#      scram-sha-256), listening on 127.0.0.1:PORT only, socket in DIR;
#   4. starts it (log in DIR/server.log) unless it is running;
#   5. creates a login role (CREATEROLE, not superuser) with a random password kept in
#      DIR.password (mode 0600), and a database it owns.
# Stop it with: runuser -u postgres -- pg_ctl -D DIR stop   (or pg_ctl -D DIR stop as that user)
set -euo pipefail

dir="${YUMEN_PG_DIR:-/var/lib/yumen/pg}"
port="${YUMEN_PG_PORT:-5432}"
db="${YUMEN_PG_DB:-yumen_test}"
role="${YUMEN_PG_USER:-yumen}"

while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --db) db="$2"; shift 2 ;;
        --user) role="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "setup_postgres: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "setup_postgres: $*" >&2; exit 1; }

[[ "$port" =~ ^[0-9]+$ ]] || die "--port '$port' is not a number"
[[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || die "--db '$db' must be a lowercase identifier"
[[ "$role" =~ ^[a-z_][a-z0-9_]*$ ]] || die "--user '$role' must be a lowercase identifier"
case "$dir" in /*) ;; *) dir="$(pwd)/$dir" ;; esac

find_bin() {
    local name="$1" candidate
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    for candidate in /usr/local/bin/"$name" /usr/lib/postgresql/*/bin/"$name"; do
        if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
    done
    return 1
}

if ! find_bin initdb >/dev/null || ! find_bin psql >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup_postgres: installing PostgreSQL with apt-get" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        # Debian's package creates and may start its own cluster on 5432; stop the one it
        # just made so that it does not hold the port (its data stays in /var/lib/postgresql)
        if command -v pg_lsclusters >/dev/null 2>&1; then
            pg_lsclusters -h | while read -r ver name _port status _rest; do
                if [ "$status" = online ]; then pg_ctlcluster "$ver" "$name" stop >&2 || true; fi
            done
        fi
    fi
fi
initdb="$(find_bin initdb)" || die "initdb not found; install PostgreSQL (Debian: apt-get install postgresql)"
pg_ctl="$(find_bin pg_ctl)" || die "pg_ctl not found next to initdb"
psql="$(find_bin psql)" || die "psql not found; install the PostgreSQL client"

# The server must not run as root.
if [ "$(id -u)" = 0 ]; then
    owner=postgres
    if ! id "$owner" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$owner"
    fi
    as_owner() { runuser -u "$owner" -- "$@"; }
else
    owner="$(id -un)"
    as_owner() { "$@"; }
fi
# peer authentication on the socket maps the OS user to the database superuser of that name
super="$owner"

mkdir -p "$(dirname "$dir")"
if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    chmod 700 "$dir"
    [ "$(id -u)" = 0 ] && chown "$owner": "$dir"
fi

if [ ! -f "$dir/PG_VERSION" ]; then
    echo "setup_postgres: initializing a cluster in $dir" >&2
    as_owner "$initdb" -D "$dir" -U "$super" -E UTF8 --locale=C \
        --auth-local=peer --auth-host=scram-sha-256 >&2
fi

opts="-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir"
if ! as_owner "$pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    echo "setup_postgres: starting the server on 127.0.0.1:$port" >&2
    as_owner "$pg_ctl" -D "$dir" -l "$dir/server.log" -o "$opts" -w -t 60 start >&2 \
        || die "the server did not start; see $dir/server.log (is port $port taken? pg_lsclusters lists Debian's own)"
fi

pwfile="$dir.password"
if [ ! -s "$pwfile" ]; then
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > "$pwfile")
fi
password="$(cat "$pwfile")"

run_sql() {
    as_owner "$psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U "$super" -d postgres "$@"
}
if [ "$(run_sql -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" != 1 ]; then
    run_sql -c "CREATE ROLE \"$role\" LOGIN CREATEROLE" >&2
fi
# (re)set the password from the file, so a re-run always prints a DSN that works
printf "ALTER ROLE \"%s\" PASSWORD '%s';\n" "$role" "$password" | run_sql >&2
if [ "$(run_sql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    run_sql -c "CREATE DATABASE \"$db\" OWNER \"$role\"" >&2
fi

echo "postgresql://$role:$password@127.0.0.1:$port/$db"
