#!/usr/bin/env bash
# MooseFS (Debian packages): one master and three chunkservers on this machine, goal 3 (three
# copies of every chunk), mounted with mfsmount. All state under WORKDIR.
set -euo pipefail
PEER=moosefs
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CHUNKSERVERS=3

install() { install_packages moosefs-master moosefs-chunkserver moosefs-client; }

all_chunkservers() {
    (($(grep -c "chunkserver register end" "$1/master.log") >= CHUNKSERVERS))
}

start() {
    local work=$1 mnt=$2
    install
    mkdir -p "$work/master" "$mnt"
    # KEEP=1 leaves a failed start in place to read its logs.
    trap 'stop "$work" "$mnt"' EXIT; [[ -n ${KEEP:-} ]] && trap - EXIT
    add_peer_address
    cp /var/lib/mfs/metadata.mfs.empty "$work/master/metadata.mfs" 2>/dev/null ||
        echo "MFSM NEW" >"$work/master/metadata.mfs"
    echo "* / rw,alldirs,maproot=0" >"$work/master/mfsexports.cfg"
    cat >"$work/master/mfsmaster.cfg" <<CFG
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $work/master
EXPORTS_FILENAME = $work/master/mfsexports.cfg
MATOML_LISTEN_HOST = $PEER_ADDRESS
MATOCS_LISTEN_HOST = $PEER_ADDRESS
MATOCL_LISTEN_HOST = $PEER_ADDRESS
CFG
    mfsmaster -c "$work/master/mfsmaster.cfg" -f start >"$work/master.log" 2>&1 &
    record_pid "$work" $!
    wait_for 30 "the MooseFS master" bash -c "exec 3<>/dev/tcp/$PEER_ADDRESS/9421"
    local index
    for index in $(seq 1 "$CHUNKSERVERS"); do
        local dir=$work/cs$index
        mkdir -p "$dir/hdd"
        echo "$dir/hdd" >"$dir/mfshdd.cfg"
        cat >"$dir/mfschunkserver.cfg" <<CFG
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $dir
HDD_CONF_FILENAME = $dir/mfshdd.cfg
MASTER_HOST = $PEER_ADDRESS
BIND_HOST = $PEER_ADDRESS
CSSERV_LISTEN_HOST = $PEER_ADDRESS
CSSERV_LISTEN_PORT = $((9422 + index * 10))
HDD_LEAVE_SPACE_DEFAULT = 1GiB
CFG
        mfschunkserver -c "$dir/mfschunkserver.cfg" -f start >"$work/cs$index.log" 2>&1 &
        record_pid "$work" $!
    done
    mfsmount -f "$mnt" -H $PEER_ADDRESS -P 9421 >"$work/mount.log" 2>&1 &
    record_pid "$work" $!
    wait_for 30 "the MooseFS mount" is_mounted "$mnt"
    wait_for 60 "$CHUNKSERVERS chunkservers to register" all_chunkservers "$work"
    mfssetgoal -r 3 "$mnt" >/dev/null
    wait_for 30 "a working mount" check_mount "$mnt"
    trap - EXIT
    echo "MooseFS $(mfsmaster -v 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1), goal 3, $CHUNKSERVERS chunkservers on one host"
}

stop() {
    local work=$1 mnt=$2
    unmount "$mnt"
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
