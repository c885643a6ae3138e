#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests that submit real Slurm jobs
# (tests/test_cluster.py): Debian's slurm-wlm and munge, run as root.
#   bash tests/support/slurm.sh install   apt-get the packages (.ci/run does it; needs root)
#   bash tests/support/slurm.sh start     munged, slurmctld, slurmd; returns once the node is idle
#   bash tests/support/slurm.sh stop
# Each prints why and exits 1 when it cannot (no root, no package, a daemon that does not start).
set -uo pipefail
STATE=/var/spool/experiments-slurm
CONF=/etc/slurm/slurm.conf

fail() { echo "slurm: $*"; exit 1; }

install() {
  command -v sbatch >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || fail "not root: cannot apt-get install slurm-wlm munge"
  command -v apt-get >/dev/null || fail "no apt-get on this machine"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurm-wlm munge; } >/tmp/slurm-apt.log 2>&1 || fail "apt-get install failed (/tmp/slurm-apt.log)"
}

write_conf() {
  local host node
  host=$(hostname -s)
  # this node as slurmd sees it (CPUs, sockets, memory): a declared node that differs is drained
  node=$(slurmd -C | head -1) || fail "slurmd -C failed"
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" /var/log/slurm
  cat >"$CONF" <<EOF
ClusterName=experiments
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  command -v sbatch >/dev/null || fail "slurm-wlm is not installed (bash tests/support/slurm.sh install)"
  [ "$(id -u)" = 0 ] || fail "not root: cannot start munged, slurmctld and slurmd"
  if sinfo -h -o %T 2>/dev/null | grep -q idle; then return 0; fi
  write_conf
  [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge && dd if=/dev/urandom bs=1 count=1024 \
      of=/etc/munge/munge.key 2>/dev/null && chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged 2>/dev/null \
    || /usr/sbin/munged --force || fail "munged did not start"
  pgrep -x slurmctld >/dev/null || slurmctld || fail "slurmctld did not start (/var/log/slurm/slurmctld.log)"
  pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (/var/log/slurm/slurmd.log)"
  for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -q idle && return 0
    sleep 1
  done
  fail "the node is not idle after 60 s: $(sinfo -h -o '%T %E' 2>&1)"
}

stop() {
  pkill -x slurmd; pkill -x slurmctld; return 0
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) fail "usage: slurm.sh install|start|stop" ;;
esac
