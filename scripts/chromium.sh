#!/usr/bin/env bash
# Headless Chromium for the console's browser test (tests/real/test_console.py).
#
#   scripts/chromium.sh install   install Debian's `chromium` when no Chromium is found (root)
#   scripts/chromium.sh path      print the Chromium executable the tests will launch
#
# The test drives it with Playwright's Python client (the `dev` extra) through
# `executable_path`: Playwright's own browser download (`playwright install`) is never used,
# so the only browser is the distribution's package, updated with the rest of the system.
# ALIGNSERVE_CHROMIUM=/path/to/chrome picks another executable; ALIGNSERVE_SKIP_CHROMIUM=1
# makes `install` a no-op (the browser test is then skipped).
set -euo pipefail

cmd="${1:-}"

log() { echo "chromium.sh: $*" >&2; }

find_chromium() {
    local candidate
    for candidate in "${ALIGNSERVE_CHROMIUM:-}" chromium chromium-browser google-chrome; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

install() {
    if find_chromium >/dev/null; then
        return 0
    fi
    if [[ "$(id -u)" != 0 ]]; then
        log "no Chromium found and not root: install it (Debian: apt-get install chromium)"
        exit 1
    fi
    log "installing Chromium (apt-get install chromium)"
    export DEBIAN_FRONTEND=noninteractive
    # A stale package list names versions the mirror no longer has: refresh it first.
    apt-get update -q >&2
    # fonts-liberation: readable text in the screenshots; the package's recommends are not needed.
    apt-get install -y -q --no-install-recommends chromium fonts-liberation >&2
    find_chromium >/dev/null || { log "chromium installed but not found on PATH"; exit 1; }
}

case "$cmd" in
    install)
        if [[ "${ALIGNSERVE_SKIP_CHROMIUM:-}" == 1 ]]; then
            log "ALIGNSERVE_SKIP_CHROMIUM=1: not installing Chromium"
        else
            install
        fi
        ;;
    path)
        find_chromium || { log "no Chromium found (scripts/chromium.sh install)"; exit 1; }
        ;;
    *)
        echo "usage: $0 install | path" >&2
        exit 2
        ;;
esac
