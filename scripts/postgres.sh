#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests and for trying the networked job store locally.
#
#   scripts/postgres.sh install       install Debian's `postgresql` if pg_ctl is missing (root)
#   scripts/postgres.sh start [DIR]   create a cluster in DIR (once), start it on a free localhost
#                                     port and print its URL (postgresql://postgres@127.0.0.1:PORT/postgres)
#   scripts/postgres.sh url [DIR]     print the URL of the running cluster in DIR
#   scripts/postgres.sh stop [DIR]    stop it (DIR stays; `rm -rf DIR` throws it away)
#
# DIR defaults to $ALIGNSERVE_PG_DIR or /tmp/alignserve-pg. The cluster trusts local connections
# and runs with fsync off: it is for tests only, never for data you want to keep.
# PostgreSQL refuses to run as root, so as root every server command runs as the `postgres`
# system user that the Debian package creates (DIR is handed to that user).
# ALIGNSERVE_SKIP_PG=1 makes `install` a no-op (the PostgreSQL tests are then skipped).
set -euo pipefail

cmd="${1:-}"
dir="${2:-${ALIGNSERVE_PG_DIR:-/tmp/alignserve-pg}}"

log() { echo "postgres.sh: $*" >&2; }

bin_dir() {
    # Debian keeps the server binaries out of PATH, in /usr/lib/postgresql/<version>/bin.
    local found
    if found="$(command -v pg_ctl 2>/dev/null)"; then
        dirname "$(readlink -f "$found")"
        return 0
    fi
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -n "$found" && -x "$found/pg_ctl" ]]; then
        echo "$found"
        return 0
    fi
    return 1
}

install() {
    if bin_dir >/dev/null; then
        return 0
    fi
    if [[ "$(id -u)" != 0 ]]; then
        log "pg_ctl not found and not root: install PostgreSQL (Debian: apt-get install postgresql)"
        exit 1
    fi
    log "installing PostgreSQL (apt-get install postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends postgresql >&2
    bin_dir >/dev/null || { log "postgresql installed but no pg_ctl found"; exit 1; }
}

# Run a server command as a user PostgreSQL accepts.
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() {
    [[ -f "$dir/data/postmaster.pid" ]] && as_pg "$(bin_dir)/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

start() {
    install
    local bin port
    bin="$(bin_dir)"
    if running && [[ -f "$dir/url" ]]; then
        cat "$dir/url"
        return 0
    fi
    mkdir -p "$dir"
    if [[ "$(id -u)" == 0 ]]; then
        id postgres >/dev/null 2>&1 || { log "no 'postgres' system user to run the server as"; exit 1; }
        chown postgres "$dir"
    fi
    chmod 700 "$dir"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale \
            >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    port="$(free_port)"
    # Tests create and drop a database per test and many connection pools: durability is
    # worthless here and the connection limit must be roomy. One line: pg_ctl hands the options
    # to /bin/sh, where a newline would end the command before its log redirection.
    local opts="-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir"
    opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    if ! as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$opts" \
        >/dev/null; then
        log "the server did not start; its log:"
        tail -n 30 "$dir/server.log" >&2 || true
        exit 1
    fi
    echo "postgresql://postgres@127.0.0.1:$port/postgres" | tee "$dir/url"
}

stop() {
    if running; then
        as_pg "$(bin_dir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    rm -f "$dir/url"
}

case "$cmd" in
    install)
        if [[ "${ALIGNSERVE_SKIP_PG:-}" == 1 ]]; then
            log "ALIGNSERVE_SKIP_PG=1: not installing PostgreSQL"
        else
            install
        fi
        ;;
    start) start ;;
    stop) stop ;;
    url)
        running && [[ -f "$dir/url" ]] || { log "no server running in $dir"; exit 1; }
        cat "$dir/url"
        ;;
    *)
        echo "usage: $0 install | start [DIR] | url [DIR] | stop [DIR]" >&2
        exit 2
        ;;
esac
