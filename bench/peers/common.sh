# Shared by the peer scripts (sourced): logging, bounded waits, package installs, and
# stopping the processes a script recorded in WORKDIR/pids.
# shellcheck shell=bash

log() { printf '%s: %s\n' "${PEER:-peer}" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s, at most SECONDS.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
        sleep 0.2
    done
}

is_mounted() { mountpoint -q "$1"; }

# Installs missing Debian packages without starting their services (the scripts start
# their own daemons with state in WORKDIR).
install_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || {
        rm -f /usr/sbin/policy-rc.d
        die "apt-get install ${missing[*]} failed"
    }
    rm -f /usr/sbin/policy-rc.d
}

# record_pid WORKDIR PID
record_pid() { echo "$2" >>"$1/pids"; }

# stop_recorded WORKDIR: SIGTERM to every recorded PID, SIGKILL after 10 s.
stop_recorded() {
    local work=$1 pid
    [[ -f $work/pids ]] || return 0
    local pids
    mapfile -t pids <"$work/pids"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    local deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$work/pids"
}

# unmount DIR: normal unmount, lazy as the fallback.
unmount() {
    local dir=$1
    is_mounted "$dir" || return 0
    umount "$dir" 2>/dev/null || umount -l "$dir" 2>/dev/null || true
}

# check_mount DIR: the mount answers a write and a read.
check_mount() {
    local dir=$1
    echo ok >"$dir/.peer-check" && [[ $(cat "$dir/.peer-check") == ok ]] && rm -f "$dir/.peer-check"
}

usage() {
    echo "usage: $0 install | start WORKDIR MOUNTDIR | stop WORKDIR MOUNTDIR" >&2
    exit 2
}

# MooseFS chunkservers and GlusterFS bricks refuse 127.0.0.1 ("use the address of a
# network controller"). A second, private address on lo gives this machine an address that
# is not 127.x; traffic to it never leaves the machine.
PEER_ADDRESS=10.214.0.1

add_peer_address() {
    ip addr show dev lo | grep -q "inet $PEER_ADDRESS/" || ip addr add "$PEER_ADDRESS/32" dev lo
}

remove_peer_address() { ip addr delete "$PEER_ADDRESS/32" dev lo 2>/dev/null || true; }
