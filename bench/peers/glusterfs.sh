#!/usr/bin/env bash
# GlusterFS from Debian's packages: a private glusterd on 127.0.0.1 and one replica 3 volume of
# three bricks on this host, FUSE-mounted with the glusterfs client. The glusterd runs with its
# own volfile, so its state (normally /var/lib/glusterd), run directory (sockets, pid files,
# normally /run/gluster) and logs (normally /var/log/glusterfs) all live under WORKDIR; the
# machine's own glusterd service and state are not touched.
#
#   glusterfs.sh install | start WORKDIR MOUNTDIR | stop WORKDIR MOUNTDIR
#
# Ports: glusterd 24007 (GLUSTERD_PORT overrides), bricks from 49152 up (as glusterd picks).
set -euo pipefail
PEER=glusterfs
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VOLUME=shoalpeer
BRICKS=3
PORT=${GLUSTERD_PORT:-24007}

install() { install_packages glusterfs-server glusterfs-client; }

version() { glusterfs --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1; }

# gcli WORKDIR ARG...: the gluster CLI, talking to this WORKDIR's glusterd only, bounded in time.
gcli() {
    local work=$1
    shift
    timeout 60 gluster --mode=script --glusterd-sock="$work/run/glusterd.socket" \
        --log-file="$work/log/cli.log" "$@"
}

# brick_host: a name for this host that resolves to a loopback address. The CLI rejects
# "localhost", "127.*" and "0.*" as brick hosts by their spelling, not by what they resolve to;
# /etc/hosts usually maps the hostname to 127.0.0.1 or 127.0.1.1, which passes and stays on lo.
brick_host() {
    local name address
    for name in "$(hostname)" "$(hostname -f 2>/dev/null || true)"; do
        [[ -n $name && $name != localhost* ]] || continue
        address=$(getent ahostsv4 "$name" 2>/dev/null | awk 'NR == 1 { print $1 }')
        if [[ $address == 127.* ]]; then
            echo "$name"
            return 0
        fi
    done
    return 1
}

# replicated FILE WORKDIR: FILE reached every brick.
replicated() {
    local brick
    for brick in "$2"/bricks/b*; do [[ -f $brick/$1 ]] || return 1; done
}

# record_daemons WORKDIR: records the brick and self-heal daemons glusterd spawned, and the
# control sockets they made in /run/gluster (a path glusterd does not let us move).
record_daemons() {
    local work=$1 pidfile pid
    while IFS= read -r pidfile; do
        pid=$(tr -dc 0-9 <"$pidfile")
        [[ -n $pid ]] || continue
        record_pid "$work" "$pid"
        tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -A1 -x -- -S | grep '^/' \
            >>"$work/global-paths" || true
    done < <(find "$work/run" -name '*.pid' ! -name glusterd.pid)
}

# Paths outside WORKDIR that glusterd creates at startup whatever its working directory.
GLOBAL_PATHS=(/var/lib/glusterd/geo-replication/gsyncd_template.conf
    /var/lib/glusterd/geo-replication /var/lib/glusterd/ss_brick /run/gluster/snaps)

# remove_global WORKDIR: removes the paths outside WORKDIR that this run created.
remove_global() {
    local path
    [[ -f $1/global-paths ]] || return 0
    while IFS= read -r path; do
        if [[ -S $path || -f $path ]]; then
            rm -f "$path"
        elif [[ -d $path ]]; then
            rmdir "$path" 2>/dev/null || true
        fi
    done < <(tac "$1/global-paths")
}

start() {
    local work=$1 mnt=$2
    install
    prepare_dirs "$work" "$mnt"
    # shellcheck disable=SC2064 # expand now: the locals are gone when the trap runs
    trap "log 'start failed, cleaning up'; stop $(printf '%q %q' "$work" "$mnt")" EXIT
    trap 'exit 1' INT TERM HUP
    port_free "$PORT" || die "port $PORT is in use (is the system glusterd running? set GLUSTERD_PORT)"
    local host
    host=$(brick_host) || die "no name of this host resolves to 127.x (the gluster CLI refuses localhost/127.x spelled out as brick hosts)"
    mkdir -p "$work/state" "$work/run" "$work/log"
    local path
    for path in "${GLOBAL_PATHS[@]}"; do
        [[ -e $path ]] || echo "$path" >>"$work/global-paths"
    done
    cat >"$work/glusterd.vol" <<VOL
volume management
    type mgmt/glusterd
    option working-directory $work/state
    option run-directory $work/run
    option glusterd-sockfile $work/run/glusterd.socket
    option cluster-test-mode $work/log
    option transport-type socket
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.listen-port $PORT
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
VOL
    spawn "$work" "$work/log/glusterd.out" glusterd -N -f "$work/glusterd.vol" \
        -p "$work/run/glusterd.pid" -l "$work/log/glusterd.log"
    wait_for 30 "glusterd on 127.0.0.1:$PORT" gcli "$work" volume list

    local bricks=() index
    for ((index = 1; index <= BRICKS; index++)); do
        mkdir -p "$work/bricks/b$index"
        bricks+=("$host:$work/bricks/b$index")
    done
    # force: three bricks of one replica set on one server, and bricks on the root file
    # system, are both refused without it.
    gcli "$work" volume create "$VOLUME" replica "$BRICKS" transport tcp "${bricks[@]}" force \
        >"$work/log/create.out" 2>&1 || die "volume create failed: $(cat "$work/log/create.out")"
    gcli "$work" volume start "$VOLUME" >"$work/log/start.out" 2>&1 ||
        die "volume start failed: $(cat "$work/log/start.out")"
    record_daemons "$work"

    spawn "$work" "$work/log/mount.out" glusterfs -N --volfile-server=127.0.0.1 \
        --volfile-server-port="$PORT" --volfile-id="$VOLUME" \
        --log-file="$work/log/mount.log" "$mnt"
    wait_for 30 "the mount at $mnt" is_mounted "$mnt"
    wait_for 60 "a working mount at $mnt" check_mount "$mnt"
    # A file written through the mount lands on all three bricks: all replicas are up.
    local probe=.peer-replica-probe
    echo probe >"$mnt/$probe"
    wait_for 30 "the probe file on all $BRICKS bricks" replicated "$probe" "$work"
    rm -f "${mnt:?}/$probe"
    trap - EXIT
    echo "GlusterFS $(version), replica $BRICKS, $BRICKS bricks and glusterd on loopback"
}

stop() {
    local work=$1 mnt=$2
    unmount "$mnt"
    # Record the bricks (and their sockets) first: volume stop removes their pid files.
    [[ -d $work/run ]] && record_daemons "$work"
    if [[ -S $work/run/glusterd.socket ]] && gcli "$work" volume info "$VOLUME" >/dev/null 2>&1; then
        gcli "$work" volume stop "$VOLUME" force >/dev/null 2>&1 || log "volume stop failed"
        gcli "$work" volume delete "$VOLUME" >/dev/null 2>&1 || log "volume delete failed"
    fi
    stop_recorded "$work" 20
    # Bricks glusterd spawned after the last record (a start that failed half way): they
    # all name WORKDIR on their command line.
    if [[ -d $work ]]; then
        local pid
        for pid in $(pids_under "$work/" glusterd glusterfsd glusterfs); do
            record_pid "$work" "$pid"
        done
        stop_recorded "$work" 10
    fi
    remove_global "$work"
    clear_workdir "$work"
}

dispatch "$@"
