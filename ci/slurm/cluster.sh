#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, so that CI runs the workflow through a real
# scheduler (tests/test_slurm.py). Debian's slurm-wlm 22.05 with munge, run as root.
#
#   ci/slurm/cluster.sh start        install if missing, configure, start, wait for an idle node
#   ci/slurm/cluster.sh stop         cancel jobs, stop every daemon it started, remove its files
#   ci/slurm/cluster.sh run CMD...   start, run CMD with MYOFLOW_REQUIRE_SLURM=1, stop (also
#                                    when CMD fails or is interrupted); exits with CMD's status.
#                                    One run at a time per machine: a second waits (`make test`).
#   ci/slurm/cluster.sh status       sinfo and squeue
#
# The node has this machine's CPUs and memory and one fake GPU (its device is /dev/null),
# in two partitions, `cpu` (default) and `gpu`; the cluster is named myoflow-ci. No cgroups
# (processes tracked through /proc, tasks not confined) and no accounting database:
# finished jobs are appended to the job completion log (`scontrol show config`, JobCompLoc).
#
# It refuses to touch a SLURM configuration it did not write, so it is safe to run on a
# machine that is part of a real cluster (it stops there). Settings, from the environment:
#   MYOFLOW_SLURM_TIMEOUT  seconds to wait for each daemon and for the node (default 60)
set -euo pipefail

TIMEOUT=${MYOFLOW_SLURM_TIMEOUT:-60}
MARKER="# Written by myoflow ci/slurm/cluster.sh: a one-node test cluster."
CONF_DIR=/etc/slurm
CONF_FILES=(slurm.conf gres.conf cgroup.conf)
STATE=/var/lib/myoflow-slurm          # spool directories, pid files, flags
LOGS=/var/log/myoflow-slurm           # daemon logs and the job completion log; kept by stop
LOCK=/run/myoflow-slurm.lock          # held by `run`
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "slurm: $*"; }
die() {
    echo "slurm: error: $*" >&2
    exit 1
}

require_root() {
    [[ $(id -u) == 0 ]] || die "must run as root (installs packages, writes $CONF_DIR, starts daemons)"
}

# Waits up to $TIMEOUT seconds for a command to succeed.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
    say "$what after $((SECONDS - started))s"
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# A start or stop must not pull the cluster from under a `run` (another `make test`):
# they hold the lock too, which a `run` holds from start to stop.
lock() {
    [[ ${HOLDS_LOCK:-} == 1 ]] && return 0
    exec 9>"$LOCK"
    flock --nonblock 9 || die "the test cluster is in use by a \`cluster.sh run\` (make test); try again when it ends"
    HOLDS_LOCK=1
}

ours() { [[ -f $CONF_DIR/slurm.conf ]] && grep -qxF "$MARKER" "$CONF_DIR/slurm.conf"; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sinfo >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]})) || return 0
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    mkdir -p "$LOGS"
    export DEBIAN_FRONTEND=noninteractive
    local log=$LOGS/apt.log
    # A fresh machine has no package lists yet: update them if the first try fails.
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$log" 2>&1; then
        if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; } >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            die "could not install ${PACKAGES[*]} with apt-get (log: $log)"
        fi
    fi
    say "installed after $((SECONDS - started))s"
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already running"
        return 0
    fi
    runuser -u munge -- /usr/sbin/munged 9>&- || die "munged did not start (see /var/log/munge/munged.log)"
    touch "$STATE/munged.ours"
    wait_for "munge works" sh -c 'munge -n | unmunge' ||
        die "munge does not work after ${TIMEOUT}s (see /var/log/munge/munged.log)"
}

write_config() {
    local host cpus node
    host=$(hostname -s)
    # This machine as slurmd sees it: CPUs, sockets, cores, threads, RealMemory (MB).
    node=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
    [[ $node == *CPUs=* ]] || die "slurmd -C did not describe this machine: $node"
    [[ $node =~ CPUs=([0-9]+) ]] && cpus=${BASH_REMATCH[1]}
    cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER
# ci/slurm/cluster.sh stop removes it. Not for production.
ClusterName=myoflow-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
# No cgroups: processes are tracked through /proc and tasks are not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
# Finished jobs stay visible to squeue for this long (the executor plugin's status
# queries need it, as there is no accounting database for sacct).
MinJobAge=600
# No accounting database; each finished job is appended to this file.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 $node Gres=gpu:fake:1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
# One fake GPU: scheduled like a real one; its "device" is /dev/null (no cgroups confine it).
AutoDetect=off
NodeName=$host Name=gpu Type=fake File=/dev/null
EOF
    cat >"$CONF_DIR/cgroup.conf" <<EOF
$MARKER
# Nothing is confined (TaskPlugin=task/none, ProctrackType=proctrack/linuxproc).
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
    say "wrote $CONF_DIR/{${CONF_FILES[*]// /,}} for node $host ($cpus CPUs, 1 fake GPU)"
}

node_idle() { [[ $(sinfo --noheader --nodes "$(hostname -s)" --format %T 2>/dev/null) == idle* ]]; }

show_logs() {
    sinfo --list-reasons >&2 2>/dev/null || true
    local log
    for log in "$LOGS/slurmctld.log" "$LOGS/slurmd.log"; do
        if [[ -f $log ]]; then
            echo "--- $log" >&2
            tail -n 15 "$log" >&2
        fi
    done
    return 0
}

start() {
    require_root
    lock
    started=$SECONDS
    if [[ -f $CONF_DIR/slurm.conf ]] && ! ours; then
        die "$CONF_DIR/slurm.conf exists and was not written by this script; refusing to touch a real SLURM set-up"
    fi
    if ours; then
        say "a previous test cluster is still configured; stopping it first"
        stop
    fi
    # A failed start leaves nothing running.
    trap 'echo "slurm: start failed; stopping what was started" >&2; stop >/dev/null 2>&1 || true' EXIT
    install_packages
    mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$LOGS" "$CONF_DIR"
    rm -f "$LOGS"/slurmctld.log "$LOGS"/slurmd.log "$LOGS"/jobcomp.log
    start_munge
    write_config
    # -c: start from empty state (no jobs from an earlier cluster)
    slurmctld -c 9>&- || { show_logs; die "slurmctld did not start"; }
    wait_for "slurmctld answers" scontrol ping || { show_logs; die "slurmctld does not answer after ${TIMEOUT}s"; }
    slurmd 9>&- || { show_logs; die "slurmd did not start"; }
    if ! wait_for "node $(hostname -s) idle" node_idle; then
        show_logs
        die "node $(hostname -s) not idle after ${TIMEOUT}s: $(sinfo --noheader --format '%N %T' 2>&1)"
    fi
    trap - EXIT
    sinfo
}

# Sends TERM, then KILL, to the process in a pid file, waiting for it to exit.
stop_pidfile() {
    local name=$1 pidfile=$2 pid
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name ($pid) ignored TERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop() {
    require_root
    lock
    if [[ -f $CONF_DIR/slurm.conf ]] && ! ours; then
        die "$CONF_DIR/slurm.conf was not written by this script; not stopping anything"
    fi
    if ours && scontrol ping >/dev/null 2>&1; then
        # Cancel every job and let its steps end while slurmd still runs.
        squeue --noheader --format %i | xargs -r scancel --full 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while [[ -n $(squeue --noheader --states=PENDING,RUNNING,COMPLETING --format %i 2>/dev/null) ]] &&
            ((SECONDS < deadline)); do sleep 0.5; done
    fi
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
    if [[ -f $STATE/munged.ours ]]; then
        stop_pidfile munged /run/munge/munged.pid
        rm -f "$STATE/munged.ours"
    fi
    local left
    left=$(pgrep -x slurmstepd || true)
    [[ -z $left ]] || say "warning: slurmstepd processes still running: $left"
    if ours; then
        for file in "${CONF_FILES[@]}"; do rm -f "${CONF_DIR:?}/$file"; done
    fi
    rm -rf "${STATE:?}"
    say "stopped; logs in $LOGS"
}

status() {
    sinfo && squeue
}

run() {
    (($#)) || die "usage: $0 run COMMAND [ARGS...]"
    require_root
    exec 9>"$LOCK"
    if ! flock --nonblock 9; then
        say "another run is using the test cluster; waiting for it"
        flock 9
    fi
    HOLDS_LOCK=1
    start
    # (stop and what it calls return explicit statuses: in a trap, a bare `return` would
    # return the command's status and, with set -e, end the stop early.)
    trap 'stop' EXIT
    trap 'exit 130' INT TERM
    local status=0
    MYOFLOW_REQUIRE_SLURM=1 "$@" || status=$?
    exit "$status"
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
run)
    shift
    run "$@"
    ;;
*)
    echo "usage: $0 start|stop|run COMMAND...|status" >&2
    exit 2
    ;;
esac
