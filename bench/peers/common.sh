# Helpers shared by the peer scripts (sourced, never run): logging to stderr, bounded waits,
# package installs, mount checks, and stopping exactly the processes a script recorded.
# shellcheck shell=bash

# The script's own stderr, kept on a spare descriptor: a trap can fire while a command's
# stderr is redirected to a log file, and its messages must still reach the caller.
exec {LOG_FD}>&2
log() { printf '%s: %s\n' "${PEER:-peer}" "$*" >&"$LOG_FD"; }

die() {
    log "error: $*"
    exit 1
}

usage() {
    echo "usage: $0 install | start WORKDIR MOUNTDIR | stop WORKDIR MOUNTDIR" >&2
    exit 2
}

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every 0.25 s until it succeeds; after
# SECONDS it logs what it waited for and returns 1 (set -e callers then fail and clean up).
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "error: timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.25
    done
}

# is_mounted DIR: DIR is a mount point. Reads /proc/self/mountinfo rather than stat'ing DIR, so
# a dead FUSE daemon (stat would hang or fail with ENOTCONN) still counts as mounted.
is_mounted() {
    local dir
    dir=$(realpath -m "$1")
    # mountinfo escapes space, tab, newline and backslash as octal.
    dir=${dir//\\/\\134}
    dir=${dir// /\\040}
    awk -v d="$dir" '$5 == d { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# unmount DIR: umount, retried briefly (a FUSE daemon may still be flushing), then a lazy
# unmount so a hung daemon cannot leave the directory wedged.
unmount() {
    local dir=$1 try
    for try in 1 2 3 4 5; do
        is_mounted "$dir" || return 0
        umount "$dir" 2>/dev/null && continue
        sleep "0.$try"
    done
    is_mounted "$dir" || return 0
    log "umount $dir failed, unmounting lazily"
    umount -l "$dir" 2>/dev/null || true
}

# install_packages PACKAGE...: apt-get installs the packages that are missing, without
# starting their system services (each script runs its own daemons with state in WORKDIR).
install_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' ||
            missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    # policy-rc.d 101 tells invoke-rc.d not to start services; only create (and later remove)
    # it if the machine has none of its own.
    local policy=/usr/sbin/policy-rc.d made_policy=0 status=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                    "${missing[@]}" >/dev/null; }
    } || status=$?
    ((made_policy)) && rm -f "$policy"
    ((status == 0)) || die "apt-get install ${missing[*]} failed"
}

# start_time PID: the process's start time in clock ticks since boot (field 22 of
# /proc/PID/stat), which with the PID identifies the process even if the PID is reused.
start_time() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # the command name may contain spaces and parentheses
    # shellcheck disable=SC2086 # split on purpose: fields 3.. of /proc/PID/stat
    set -- $stat
    echo "${20}"
}

# record_pid WORKDIR PID: remembers PID for stop_recorded. WORKDIR/pids holds one PID a line
# (the harness reads it for CPU accounting); WORKDIR/.pid-starts pairs each with its start time.
record_pid() {
    local when
    when=$(start_time "$2") || when=0
    echo "$2" >>"$1/pids"
    echo "$2 $when" >>"$1/.pid-starts"
}

# record_children WORKDIR PID: records PID's child processes too (daemons that fork a worker).
record_children() {
    local child
    for child in $(ps -o pid= --ppid "$2"); do record_pid "$1" "$child"; done
}

# alive PID START: the recorded process still runs (not a zombie, not a reused PID).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]] || return 1
    [[ $2 == 0 || $(start_time "$1") == "$2" ]]
}

# stop_recorded WORKDIR [SECONDS]: SIGTERM to every process recorded in WORKDIR/pids, SIGKILL
# to those still alive after SECONDS (default 15), then forgets them. A PID whose start time no
# longer matches the recorded one belongs to another process now and is left alone.
stop_recorded() {
    local work=$1 seconds=${2:-15} pid when
    [[ -f $work/pids ]] || return 0
    local -A starts=()
    if [[ -f $work/.pid-starts ]]; then
        while read -r pid when; do starts[$pid]=$when; done <"$work/.pid-starts"
    fi
    local -a pids=() whens=()
    while read -r pid; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        pids+=("$pid")
        whens+=("${starts[$pid]:-0}")
    done <"$work/pids"
    local i
    for i in "${!pids[@]}"; do
        alive "${pids[i]}" "${whens[i]}" && { kill -TERM "${pids[i]}" 2>/dev/null || true; }
    done
    local deadline=$((SECONDS + seconds)) left
    while :; do
        left=0
        for i in "${!pids[@]}"; do
            alive "${pids[i]}" "${whens[i]}" && left=1
        done
        ((left && SECONDS < deadline)) || break
        sleep 0.2
    done
    for i in "${!pids[@]}"; do
        if alive "${pids[i]}" "${whens[i]}"; then
            log "pid ${pids[i]} ignored SIGTERM for ${seconds}s, sending SIGKILL"
            kill -KILL "${pids[i]}" 2>/dev/null || true
        fi
    done
    rm -f "$work/pids" "$work/.pid-starts"
}

# pids_under DIR PROGRAM...: PIDs of running PROGRAMs (by executable name) whose command line
# mentions DIR; a last resort for daemons that a started daemon spawned itself (gluster
# bricks), never a match on a name alone.
pids_under() {
    local dir=$1 proc exe
    shift
    for proc in /proc/[0-9]*; do
        exe=$(readlink "$proc/exe" 2>/dev/null) || continue
        [[ " $* " == *" ${exe##*/} "* ]] || continue
        tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | grep -qF -- "$dir" && echo "${proc#/proc/}"
    done
    return 0
}

# free_port: a TCP port on 127.0.0.1 that is free right now (the kernel picks it).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# port_free PORT: nothing listens on 127.0.0.1:PORT (nor on the wildcard address).
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# check_mount DIR: the mount answers a stat, a write and a read-back.
check_mount() {
    local dir=$1 probe token
    probe="$dir/.peer-probe.$$"
    token="probe $$ $RANDOM"
    stat "$dir" >/dev/null &&
        echo "$token" >"$probe" &&
        [[ $(cat "$probe") == "$token" ]] &&
        rm -f "$probe"
}

# spawn WORKDIR LOG COMMAND...: starts COMMAND in its own session (so signals sent to the
# caller's process group do not reach it) with stdin from /dev/null and output to LOG (so it
# does not hold the caller's stdout open), records its PID and leaves it in SPAWNED_PID.
SPAWNED_PID=
spawn() {
    local work=$1 logfile=$2
    shift 2
    # A background job of a non-interactive shell is no process group leader, so setsid
    # execs COMMAND in place and $! is COMMAND's PID.
    # LOG_FD is closed too: a daemon holding the caller's stderr open would make a caller that
    # reads stderr to its end wait for the daemon's exit.
    setsid "$@" </dev/null >>"$logfile" 2>&1 {LOG_FD}>&- &
    SPAWNED_PID=$!
    record_pid "$work" "$SPAWNED_PID"
}

# prepare_dirs WORKDIR MOUNTDIR: refuses a WORKDIR that would be dangerous to empty, a
# MOUNTDIR already mounted, and creates both.
prepare_dirs() {
    local work=$1 mnt=$2
    [[ $work == /* && $mnt == /* ]] || die "WORKDIR and MOUNTDIR must be absolute paths"
    [[ $(realpath -m "$work") != / ]] || die "refusing WORKDIR /"
    is_mounted "$mnt" && die "$mnt is already mounted (run stop first)"
    mkdir -p "$work" "$mnt"
    if [[ -n $(ls -A "$work") ]]; then
        die "$work is not empty (run stop first, or pick a new WORKDIR)"
    fi
}

# clear_workdir WORKDIR: removes what start put in WORKDIR (keeps WORKDIR itself), but only
# when nothing is mounted beneath it.
clear_workdir() {
    local work=$1
    [[ -d $work && $(realpath -m "$work") != / ]] || return 0
    if grep -qF " $(realpath -m "$work")/" /proc/self/mountinfo; then
        log "something is still mounted under $work, leaving its contents"
        return 0
    fi
    find "$work" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
}

# dispatch "$@": the command line every peer script shares, once it has defined its
# install, start and stop functions. Paths are made absolute before they are recorded.
dispatch() {
    case "${1:-}" in
        install) (($# == 1)) || usage; install ;;
        start) (($# == 3)) || usage; start "$(realpath -m "$2")" "$(realpath -m "$3")" ;;
        stop) (($# == 3)) || usage; stop "$(realpath -m "$2")" "$(realpath -m "$3")" ;;
        *) usage ;;
    esac
}
