#!/usr/bin/env bash
# MooseFS from Debian's packages: one master and three chunkservers on 127.0.0.1, goal 3
# (three copies of every chunk) on the mount root, mounted with mfsmount. All state under
# WORKDIR; nothing in /etc/mfs or /var/lib/mfs is used or changed.
#
#   moosefs.sh install | start WORKDIR MOUNTDIR | stop WORKDIR MOUNTDIR
#
# Ports: master 9419 (metaloggers), 9420 (chunkservers), 9421 (clients), chunkservers
# 9422-9424, all on 127.0.0.1; MFS_PORT_BASE moves the whole block (default 9419).
set -euo pipefail
PEER=moosefs
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CHUNKSERVERS=3
GOAL=3
BASE=${MFS_PORT_BASE:-9419}
ML_PORT=$BASE CS_PORT=$((BASE + 1)) CL_PORT=$((BASE + 2))

install() { install_packages moosefs-master moosefs-chunkserver moosefs-client; }

version() { mfsmaster -v 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1; }

# registered N LOG: the master logged N chunkserver registrations.
registered() { (($(grep -c 'chunkserver register end' "$2" || true) >= $1)); }

# copies FILE N: every chunk of FILE has N valid copies.
copies() { mfscheckfile "$1" 2>/dev/null | grep -q "chunks with $2 cop"; }

start() {
    local work=$1 mnt=$2
    install
    prepare_dirs "$work" "$mnt"
    # Any failure from here on undoes what was started.
    # shellcheck disable=SC2064 # expand now: the locals are gone when the trap runs
    trap "log 'start failed, cleaning up'; stop $(printf '%q %q' "$work" "$mnt")" EXIT
    trap 'exit 1' INT TERM HUP
    local port
    for port in "$ML_PORT" "$CS_PORT" "$CL_PORT"; do
        port_free "$port" || die "port $port is in use (another MooseFS master? set MFS_PORT_BASE)"
    done

    local master=$work/master
    mkdir -p "$master"
    cp /var/lib/mfs/metadata.mfs.empty "$master/metadata.mfs"
    echo "127.0.0.1 / rw,alldirs,maproot=0" >"$master/mfsexports.cfg"
    : >"$master/mfstopology.cfg"
    cat >"$master/mfsmaster.cfg" <<CFG
WORKING_USER = root
WORKING_GROUP = root
SYSLOG_IDENT = shoal-mfsmaster
DATA_PATH = $master
EXPORTS_FILENAME = $master/mfsexports.cfg
TOPOLOGY_FILENAME = $master/mfstopology.cfg
MATOML_LISTEN_HOST = 127.0.0.1
MATOML_LISTEN_PORT = $ML_PORT
MATOCS_LISTEN_HOST = 127.0.0.1
MATOCS_LISTEN_PORT = $CS_PORT
MATOCL_LISTEN_HOST = 127.0.0.1
MATOCL_LISTEN_PORT = $CL_PORT
REMAP_BITS = 32
REMAP_SOURCE_IP_CLASS = 127.0.0.1
REMAP_DESTINATION_IP_CLASS = 0.0.0.0
CFG
    spawn "$work" "$work/master.log" mfsmaster -c "$master/mfsmaster.cfg" -f start
    wait_for 30 "the MooseFS master on 127.0.0.1:$CL_PORT" \
        bash -c "exec 3<>/dev/tcp/127.0.0.1/$CL_PORT"

    local index
    for ((index = 1; index <= CHUNKSERVERS; index++)); do
        local cs=$work/cs$index
        mkdir -p "$cs/hdd"
        echo "$cs/hdd" >"$cs/mfshdd.cfg"
        # The chunkserver refuses any 127.x.x.x master address ("use ip address of network
        # controller"). 0.0.0.0 passes that check, and Linux routes a connection to 0.0.0.0
        # to the local host: with BIND_HOST 127.0.0.1 it is 127.0.0.1 -> 127.0.0.1 on lo.
        cat >"$cs/mfschunkserver.cfg" <<CFG
WORKING_USER = root
WORKING_GROUP = root
SYSLOG_IDENT = shoal-mfscs$index
DATA_PATH = $cs
HDD_CONF_FILENAME = $cs/mfshdd.cfg
MASTER_HOST = 0.0.0.0
MASTER_PORT = $CS_PORT
BIND_HOST = 127.0.0.1
CSSERV_LISTEN_HOST = 127.0.0.1
CSSERV_LISTEN_PORT = $((BASE + 2 + index))
CFG
        spawn "$work" "$work/cs$index.log" mfschunkserver -c "$cs/mfschunkserver.cfg" -f start
    done
    wait_for 60 "$CHUNKSERVERS chunkservers to register" registered "$CHUNKSERVERS" "$work/master.log"

    spawn "$work" "$work/mount.log" mfsmount -f "$mnt" -H 127.0.0.1 -P "$CL_PORT"
    wait_for 30 "the mount at $mnt" is_mounted "$mnt"
    # Version 3.0 has goals (storage classes came with 4.0): -r sets it on the root, which new
    # files and directories inherit.
    mfssetgoal -r "$GOAL" "$mnt" >/dev/null
    [[ $(mfsgetgoal "$mnt") == *": $GOAL" ]] || die "goal $GOAL did not stick on $mnt"
    wait_for 60 "a working mount at $mnt" check_mount "$mnt"
    # A chunk written now reaches all three chunkservers: proof that goal 3 is met.
    local probe=$mnt/.peer-goal-probe
    dd if=/dev/zero of="$probe" bs=64k count=1 conv=fsync status=none
    wait_for 60 "$GOAL copies of a new chunk" copies "$probe" "$GOAL"
    rm -f "$probe"
    trap - EXIT
    echo "MooseFS $(version), goal $GOAL, $CHUNKSERVERS chunkservers and master on loopback"
}

stop() {
    local work=$1 mnt=$2
    unmount "$mnt"
    stop_recorded "$work" 20
    clear_workdir "$work"
}

dispatch "$@"
