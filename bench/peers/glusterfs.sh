#!/usr/bin/env bash
# GlusterFS (Debian packages): glusterd and a replica-3 volume of three bricks on this
# machine (three copies of every file), FUSE-mounted with the glusterfs client. Bricks and
# logs live under WORKDIR; glusterd keeps its volume table in /var/lib/glusterd, so stop
# deletes the volume it made.
set -euo pipefail
PEER=glusterfs
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VOLUME=shoalpeer

install() { install_packages glusterfs-server glusterfs-client; }

gluster_cli() { gluster --mode=script "$@"; }

start() {
    local work=$1 mnt=$2
    install
    mkdir -p "$work" "$mnt"
    trap 'stop "$work" "$mnt"' EXIT
    add_peer_address
    if ! gluster_cli volume list >/dev/null 2>&1; then
        glusterd -N --log-file="$work/glusterd.log" >/dev/null 2>&1 &
        record_pid "$work" $!
    fi
    wait_for 30 "glusterd" gluster_cli volume list
    # Bricks on one host need `force`; 127.0.0.1 is refused, hence PEER_ADDRESS.
    gluster_cli volume create "$VOLUME" replica 3 \
        "$PEER_ADDRESS:$work/brick1" "$PEER_ADDRESS:$work/brick2" "$PEER_ADDRESS:$work/brick3" force >/dev/null
    gluster_cli volume start "$VOLUME" >/dev/null
    glusterfs -N --volfile-server="$PEER_ADDRESS" --volfile-id="$VOLUME" \
        --log-file="$work/mount.log" "$mnt" >/dev/null 2>&1 &
    record_pid "$work" $!
    wait_for 30 "the GlusterFS mount" is_mounted "$mnt"
    wait_for 30 "a working mount" check_mount "$mnt"
    trap - EXIT
    echo "GlusterFS $(glusterfs --version | head -1 | grep -oE '[0-9]+\.[0-9]+' | head -1), replica 3, 3 bricks on one host"
}

stop() {
    local work=$1 mnt=$2
    unmount "$mnt"
    if gluster_cli volume info "$VOLUME" >/dev/null 2>&1; then
        gluster_cli volume stop "$VOLUME" force >/dev/null 2>&1 || true
        gluster_cli volume delete "$VOLUME" >/dev/null 2>&1 || true
    fi
    # Brick and self-heal daemons are glusterd's children, not recorded: find them by volume.
    pkill -TERM -f "glusterfsd.*$work/brick" 2>/dev/null || true
    pkill -TERM -f "glusterfs.*(glustershd|shd/$VOLUME)" 2>/dev/null || true
    stop_recorded "$work"
    remove_peer_address
    rm -rf "${work:?}"/*
}

case "${1:-}" in
    install) install ;;
    start) (($# == 3)) || usage; start "$2" "$3" ;;
    stop) (($# == 3)) || usage; stop "$2" "$3" ;;
    *) usage ;;
esac
