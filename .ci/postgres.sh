#!/usr/bin/env bash
# Throwaway PostgreSQL 15 for the store contract tests.
#
#   eval "$(.ci/postgres.sh start)"   # starts (or reuses) it; prints `export TANDEM_TEST_DATABASE_URL=...`
#   cargo test --features postgres --test store_contract
#   .ci/postgres.sh stop              # stops it and deletes its data directory
#   .ci/postgres.sh halt | resume     # stops it keeping the data / starts it again on its port
#                                     # (the fault tests restart the database mid-test)
#
# Only the export line goes to stdout (so `eval` works); progress goes to stderr.
# The cluster runs as the `postgres` system user when invoked as root (initdb refuses root),
# listens on 127.0.0.1 only, on a free port, with trust auth, fsync off (it is disposable).
# State lives in $TANDEM_PG_DIR (default: ${TMPDIR:-/tmp}/tandem-pg-<uid>).
set -euo pipefail

DIR="${TANDEM_PG_DIR:-${TMPDIR:-/tmp}/tandem-pg-$(id -u)}"
DATA="$DIR/data"
PORT_FILE="$DIR/port"
DB=tandem_test

log() { echo "postgres.sh: $*" >&2; }
die() { log "$*"; exit 1; }

find_bin() {
    local name=$1
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
    local d
    for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
        if [ -x "$d/$name" ]; then echo "$d/$name"; return; fi
    done
    die "$name not found; install PostgreSQL 15 (e.g. apt-get install postgresql-15)"
}

INITDB=$(find_bin initdb)
PG_CTL=$(find_bin pg_ctl)
PG_ISREADY=$(find_bin pg_isready)
PSQL=$(find_bin psql)

# Run a server-side command as the cluster owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user"
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local p tries=0
    while [ $tries -lt 200 ]; do
        p=$(( 20000 + (RANDOM % 30000) ))
        if ! port_in_use "$p"; then echo "$p"; return; fi
        tries=$((tries + 1))
    done
    die "no free port found"
}

url() { echo "postgres://postgres@127.0.0.1:$1/$DB"; }

running() { [ -f "$DATA/postmaster.pid" ] && as_owner "$PG_CTL" -D "$DATA" status >/dev/null 2>&1; }

wait_ready() {
    local port=$1 i
    for i in $(seq 1 60); do
        if "$PG_ISREADY" -q -h 127.0.0.1 -p "$port" -U postgres; then return 0; fi
        sleep 0.5
    done
    die "server on port $port not ready after 30 s; see $DIR/server.log"
}

launch() {
    local port=$1
    log "starting on 127.0.0.1:$port"
    as_owner "$PG_CTL" -D "$DATA" -l "$DIR/server.log" -w -t 60 \
        -o "-p $port -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >&2 || { cat "$DIR/server.log" >&2; die "pg_ctl start failed"; }
    wait_ready "$port"
}

start() {
    if running && [ -f "$PORT_FILE" ]; then
        local port; port=$(cat "$PORT_FILE")
        log "already running on port $port ($DIR)"
        wait_ready "$port"
    else
        # A stale directory (crashed run, reboot) is discarded: the data is throwaway.
        if [ -d "$DIR" ]; then
            as_owner "$PG_CTL" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
            rm -rf "$DIR"
        fi
        mkdir -p "$DIR"
        chmod 700 "$DIR"
        if [ "$(id -u)" -eq 0 ]; then chown postgres: "$DIR"; fi
        log "initdb in $DATA"
        as_owner "$INITDB" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
            >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
        local port; port=$(free_port)
        launch "$port"
        echo "$port" >"$PORT_FILE"
    fi
    local port; port=$(cat "$PORT_FILE")
    if ! "$PSQL" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
        "$PSQL" -h 127.0.0.1 -p "$port" -U postgres -d postgres -q -c "CREATE DATABASE $DB" >&2
        log "created database $DB"
    fi
    echo "export TANDEM_TEST_DATABASE_URL=$(url "$port")"
}

stop() {
    if [ -d "$DATA" ]; then
        as_owner "$PG_CTL" -D "$DATA" -m fast -w stop >&2 2>/dev/null || log "was not running"
    fi
    rm -rf "$DIR"
    log "stopped and removed $DIR"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    halt) running || die "not running"; as_owner "$PG_CTL" -D "$DATA" -m fast -w stop >&2 ;;
    resume) [ -f "$PORT_FILE" ] || die "never started"; running || launch "$(cat "$PORT_FILE")" ;;
    url) [ -f "$PORT_FILE" ] && running || die "not running"; echo "export TANDEM_TEST_DATABASE_URL=$(url "$(cat "$PORT_FILE")")" ;;
    *) echo "usage: $0 start|stop|halt|resume|url" >&2; exit 2 ;;
esac
