#!/usr/bin/env bash
# A throwaway two-node SLURM cluster for the test suite (Debian slurm 22.05 + munge), on one
# machine: node sbn1 is this machine (10.213.0.1 on a veth), node sbn2 a second slurmd in its own
# network and UTS namespace (hostname sbn2, 10.213.0.2 on the veth's other end, default route
# back through sbn1), so a job with --nodes=2 really has two hosts, two addresses and ranks that
# rendezvous over the network (MASTER_ADDR, PMI2, MPI). Both nodes offer the machine's CPUs.
# /etc/hosts gets the two names (marked lines, removed by `stop`).
#
#   local_slurm.sh start STATE_DIR   install (if missing) and start munged, slurmctld, 2 slurmd
#   local_slurm.sh stop  STATE_DIR   stop exactly the daemons that `start` started (by PID)
#   local_slurm.sh check             exit 0 if a cluster can be brought up here (root + apt or installed)
#
# Must run as root. STATE_DIR holds the PID files, logs and spool; /etc/slurm/slurm.conf is written
# because the jobs' own srun calls read the default path. An existing slurm.conf is kept in
# STATE_DIR/slurm.conf.orig and restored by `stop`.
set -euo pipefail

NODE1=sbn1
NODE2=sbn2
IP1=10.213.0.1
IP2=10.213.0.2
NETNS=specbridge-sbn2
VETH1=sbveth0
VETH2=sbveth1
HOSTS_MARK="# specbridge tests/cluster/local_slurm.sh"

cmd=${1:-}
state=${2:-/tmp/specbridge-slurm}

need_pkgs() {
    local missing=()
    for exe in slurmctld slurmd munged sbatch squeue ip nsenter; do
        command -v "$exe" >/dev/null 2>&1 || missing+=("$exe")
    done
    [ ${#missing[@]} -gt 0 ]
}

net_down() {
    ip netns pids "$NETNS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip link del "$VETH1" 2>/dev/null || true
    ip netns del "$NETNS" 2>/dev/null || true
    if grep -q "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
        grep -v "$HOSTS_MARK" /etc/hosts > /etc/hosts.specbridge.tmp || true
        cat /etc/hosts.specbridge.tmp > /etc/hosts
        rm -f /etc/hosts.specbridge.tmp
    fi
}

net_up() {
    net_down
    ip netns add "$NETNS"
    ip link add "$VETH1" type veth peer name "$VETH2"
    ip link set "$VETH2" netns "$NETNS"
    ip addr add "$IP1/24" dev "$VETH1"
    ip link set "$VETH1" up
    ip netns exec "$NETNS" ip addr add "$IP2/24" dev "$VETH2"
    ip netns exec "$NETNS" ip link set "$VETH2" up
    ip netns exec "$NETNS" ip link set lo up
    ip netns exec "$NETNS" ip route add default via "$IP1"
    printf '%s %s %s\n%s %s %s\n' "$IP1" "$NODE1" "$HOSTS_MARK" "$IP2" "$NODE2" "$HOSTS_MARK" \
        >> /etc/hosts
}

check() {
    if [ "$(id -u)" != 0 ]; then echo "not root: cannot start slurmctld/slurmd/munged" >&2; return 1; fi
    if ! ip netns list >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then
        echo "network namespaces unavailable (ip netns): no second node" >&2; return 1
    fi
    if need_pkgs && ! command -v apt-get >/dev/null 2>&1; then
        echo "slurm packages missing and no apt-get to install them" >&2; return 1
    fi
    return 0
}

install_pkgs() {
    if need_pkgs; then
        echo "installing slurmctld slurmd munge with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q slurmctld slurmd slurm-client munge iproute2 util-linux >/dev/null
    fi
}

wait_for() {  # wait_for SECONDS CMD...
    local t=$1; shift
    for _ in $(seq 1 $((t * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    return 1
}

stop_stale() {
    # daemons left by an interrupted earlier test run (its slurm.conf carries our marker) are
    # stopped; daemons of a real cluster are never touched
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        if grep -q "written by specbridge tests/cluster/local_slurm.sh" /etc/slurm/slurm.conf \
                2>/dev/null; then
            echo "stopping SLURM daemons left by an interrupted test run" >&2
            pkill -x slurmd || true
            pkill -x slurmctld || true
            net_down
            for _ in $(seq 1 50); do
                pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
                sleep 0.1
            done
            pkill -9 -x slurmd 2>/dev/null || true
            pkill -9 -x slurmctld 2>/dev/null || true
        else
            echo "a SLURM cluster not started by this script is running here; not touching it" >&2
            exit 1
        fi
    fi
}

start() {
    check
    install_pkgs
    stop_stale
    mkdir -p "$state"/{spool/ctld,spool/d-$NODE1,spool/d-$NODE2,log}
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

    # munge: a fresh key unless one is present; munged runs as user munge.
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged --force
        wait_for 10 munge -n
        pgrep -n -x munged > "$state/munged.pid"
        touch "$state/munged.ours"
    fi

    mkdir -p /etc/slurm
    if [ -f /etc/slurm/slurm.conf ] && [ ! -f "$state/slurm.conf.orig" ]; then
        cp /etc/slurm/slurm.conf "$state/slurm.conf.orig"
    fi
    cat > /etc/slurm/slurm.conf <<CONF
# written by specbridge tests/cluster/local_slurm.sh for a throwaway test cluster
ClusterName=specbridge-test
SlurmctldHost=$host($IP1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=pmi2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd-%n.pid
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d-%n
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd-%n.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$NODE1 NodeAddr=$IP1 NodeHostname=$NODE1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=$NODE2 NodeAddr=$IP2 NodeHostname=$NODE2 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE1,$NODE2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    net_up
    /usr/sbin/slurmctld -c -i
    wait_for 30 scontrol ping
    /usr/sbin/slurmd -c -N "$NODE1"
    nsenter --net="/var/run/netns/$NETNS" unshare --uts sh -c \
        "hostname $NODE2 && exec /usr/sbin/slurmd -c -N $NODE2"
    # both nodes up and idle
    if ! wait_for 60 sh -c "[ \$(sinfo -h -N -o %T | grep -cE '^(idle|mixed|allocated)') -eq 2 ]"
    then
        echo "the slurmd did not both come up; sinfo and slurmd logs:" >&2
        sinfo -N >&2 || true
        tail -20 "$state"/log/slurmd-*.log >&2 || true
        exit 1
    fi
    scontrol update nodename="$NODE1,$NODE2" state=resume >/dev/null 2>&1 || true
    echo "SLURM test cluster up: nodes $NODE1 ($IP1) and $NODE2 ($IP2, own namespaces) on" \
         "$host ($cpus CPUs, ${mem} MB each), state in $state" >&2
}

stop_pid() {  # stop_pid PIDFILE NAME
    local f=$1 name=$2 pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        echo "stopped $name (pid $pid)" >&2
    fi
    rm -f "$f"
}

stop() {
    stop_pid "$state/slurmd-$NODE2.pid" "slurmd ($NODE2)"
    stop_pid "$state/slurmd-$NODE1.pid" "slurmd ($NODE1)"
    stop_pid "$state/slurmctld.pid" slurmctld
    net_down
    if [ -f "$state/munged.ours" ]; then
        stop_pid "$state/munged.pid" munged
        rm -f "$state/munged.ours"
    fi
    if [ -f "$state/slurm.conf.orig" ]; then
        mv "$state/slurm.conf.orig" /etc/slurm/slurm.conf
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    check) check ;;
    *) echo "usage: $0 start|stop STATE_DIR | check" >&2; exit 2 ;;
esac
