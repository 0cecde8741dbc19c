#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, with job accounting, to try profiles/slurm-local and to run
# tests/test_slurm.py:
#
#   scripts/slurm-local.sh start    # install what is missing (apt, as root), configure, start, wait for the node
#   scripts/slurm-local.sh status   # the daemons and the node
#   scripts/slurm-local.sh stop     # cancel the cluster's jobs, stop exactly the daemons `start` started
#
# Its files (configuration, munge key, database, state, logs, PID files) live in $SLURM_LOCAL_DIR (default
# .slurm-local/ in the repository). The one file outside: a link /etc/slurm/slurm.conf -> its slurm.conf,
# made only where no such file is (the SLURM commands inside jobs look there) and removed by `stop`.
# The daemons run as the calling user (root here; slurmd needs root to run other users' jobs): munged,
# MariaDB, slurmdbd (job accounting, for sacct), slurmctld and slurmd, on 127.0.0.1, with proctrack/linuxproc,
# task/none and select/cons_tres over the CPUs and memory that `slurmd -C` finds. Ports:
# SLURM_LOCAL_{CTLD,SLURMD,DBD,DB}_PORT (default 6817, 6818, 6819, 6820), read when $SLURM_LOCAL_DIR is
# first configured.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(realpath -m "${SLURM_LOCAL_DIR:-$ROOT/.slurm-local}")
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
DBD_PORT=${SLURM_LOCAL_DBD_PORT:-6819}
DB_PORT=${SLURM_LOCAL_DB_PORT:-6820}
CLUSTER=popos-local
NODE=popos-node
PARTITION=local
USER_NAME=$(id -un)
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF
# Snakemake's job step runs `srun` inside each job without SLURM_* variables: it reads the compiled-in path.
SYSTEM_CONF=${SLURM_LOCAL_SYSTEM_CONF:-/etc/slurm/slurm.conf}
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stop goes backwards
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

die() { echo "slurm-local: $*" >&2; exit 1; }
say() { echo "slurm-local: $*"; }

pid_of() {  # the PID `start` recorded for daemon $1, if that process still runs that program
  local file=$DIR/run/$1.pid pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ -d /proc/$pid ]] && [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == *"$1"* ]] && echo "$pid"
}

port_of() {  # "<port> <variable that sets it>" for daemon $1 (nothing for munged, which has a socket)
  case $1 in
    mariadbd) echo "$DB_PORT SLURM_LOCAL_DB_PORT" ;; slurmdbd) echo "$DBD_PORT SLURM_LOCAL_DBD_PORT" ;;
    slurmctld) echo "$CTLD_PORT SLURM_LOCAL_CTLD_PORT" ;; slurmd) echo "$SLURMD_PORT SLURM_LOCAL_SLURMD_PORT" ;;
  esac
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_missing() {
  local missing=()
  for cmd in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$cmd" >/dev/null || PATH=$PATH:/usr/sbin:/sbin command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: install ${PACKAGES[*]} (apt-get install, as root)"
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

configure() {  # written once; delete $DIR (after `stop`) to start from scratch
  [[ -f $CONF ]] && return
  say "writing a one-node configuration in $DIR"
  mkdir -p "$DIR"/{etc,run,log,state/ctld,state/slurmd,db}
  chmod 700 "$DIR/etc"
  mungekey --create --keyfile="$DIR/etc/munge.key" --force
  chmod 600 "$DIR/etc/munge.key"
  local hw cpus mem pass
  hw=$(slurmd -C | head -1)
  cpus=$(grep -o 'CPUs=[0-9]*' <<<"$hw" | cut -d= -f2)
  mem=$(grep -o 'RealMemory=[0-9]*' <<<"$hw" | cut -d= -f2)
  pass=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  cat >"$CONF" <<EOF
# One-node cluster written by scripts/slurm-local.sh (see there).
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$USER_NAME
SlurmdUser=$USER_NAME
AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket
CryptoType=crypto/munge
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.daemon.pid
SlurmdPidFile=$DIR/run/slurmd.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$DIR/run/munge.socket
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=sched_interval=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=$USER_NAME
PidFile=$DIR/run/slurmdbd.daemon.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  mariadb-install-db --no-defaults --datadir="$DIR/db" --user="$USER_NAME" --auth-root-authentication-method=socket \
    --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: see $DIR/log/mariadb-install.log"
  echo "$pass" >"$DIR/etc/db.pass"
  chmod 600 "$DIR/etc/db.pass"
}

link_system_conf() {
  if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
    return
  elif [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]]; then
    die "$SYSTEM_CONF exists (another SLURM cluster's configuration): use that cluster, or move the file away"
  fi
  mkdir -p "$(dirname "$SYSTEM_CONF")"
  ln -s "$CONF" "$SYSTEM_CONF" || die "cannot link $SYSTEM_CONF to $CONF (run as root)"
}

launch() {  # start daemon $1 in the foreground of its own session; record its PID
  local name=$1
  local cmd
  case $name in
    munged) cmd=(munged --foreground --force --key-file="$DIR/etc/munge.key" --socket="$DIR/run/munge.socket"
                 --pid-file="$DIR/run/munged.daemon.pid" --log-file="$DIR/log/munged.log"
                 --seed-file="$DIR/state/munge.seed") ;;
    mariadbd) cmd=(mariadbd --no-defaults --datadir="$DIR/db" --socket="$DIR/run/mysqld.sock"
                   --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve --user="$USER_NAME"
                   --pid-file="$DIR/run/mariadbd.daemon.pid" --log-error="$DIR/log/mariadb.log"
                   --innodb-lock-wait-timeout=900) ;;
    slurmdbd) cmd=(slurmdbd -D) ;;
    slurmctld) cmd=(slurmctld -D -f "$CONF") ;;
    slurmd) cmd=(slurmd -D -N "$NODE" -f "$CONF") ;;
  esac
  SLURM_CONF=$CONF setsid "${cmd[@]}" >>"$DIR/log/$name.out" 2>&1 </dev/null &
  local pid=$!
  echo $pid >"$DIR/run/$name.pid"
  for ((i = 0; i < 50; i++)); do  # until setsid has become the daemon, or it has exited
    if pid_of "$name" >/dev/null || [[ ! -d /proc/$pid ]]; then break; fi
    sleep 0.1
  done
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: run COMMAND until it succeeds
  local seconds=$1 what=$2
  shift 2
  for ((i = 0; i < seconds * 2; i++)); do
    "$@" >/dev/null 2>&1 && return
    sleep 0.5
  done
  die "$what did not come up in ${seconds}s: see $DIR/log/"
}

db_ready() {
  local pass
  pass=$(<"$DIR/etc/db.pass")
  mariadb --no-defaults --socket="$DIR/run/mysqld.sock" -u root -e \
    "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

node_idle() { [[ $(sinfo -h -N -n "$NODE" -o %T 2>/dev/null) == idle ]]; }

start() {
  PATH=$PATH:/usr/sbin:/sbin
  install_missing
  configure  # slurmdbd reads its slurmdbd.conf next to $SLURM_CONF
  for name in "${DAEMONS[@]}"; do  # every port first, so that a taken one stops the start before any daemon
    local port var
    read -r port var <<<"$(port_of "$name")"
    if ! pid_of "$name" >/dev/null && [[ -n $port ]] && port_taken "$port"; then
      die "port $port (for $name) is taken by another process: stop that process, or set $var (then remove $DIR)"
    fi
  done
  link_system_conf
  for name in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$name"); then
      say "$name already runs (PID $pid)"
      continue
    fi
    launch "$name"
    case $name in
      munged) wait_for 20 munged munge -S "$DIR/run/munge.socket" -n ;;
      mariadbd) wait_for 60 MariaDB db_ready ;;
      slurmdbd) wait_for 60 slurmdbd port_taken "$DBD_PORT"
                sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true ;;
      slurmctld) wait_for 60 slurmctld scontrol ping ;;
      slurmd) ;;
    esac
    pid_of "$name" >/dev/null || die "$name exited at start: see $DIR/log/$name.out and $DIR/log/"
  done
  if [[ $USER_NAME != root ]]; then
    sacctmgr -i add user "$USER_NAME" account=root >/dev/null 2>&1 || true
  fi
  wait_for 90 "node $NODE (idle)" node_idle
  say "cluster $CLUSTER is up: node $NODE idle in partition $PARTITION"
  say "SLURM commands find it through $SYSTEM_CONF (or SLURM_CONF=$CONF)"
}

stop() {
  PATH=$PATH:/usr/sbin:/sbin
  if pid_of slurmctld >/dev/null; then  # the cluster's jobs end with it
    scancel --full --partition="$PARTITION" 2>/dev/null || true
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    local name=${DAEMONS[i]} pid
    if pid=$(pid_of "$name"); then
      kill "$pid"
      for ((t = 0; t < 60; t++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.5
      done
      if [[ -d /proc/$pid ]]; then
        say "$name (PID $pid) ignored SIGTERM for 30 s: killing it"
        kill -9 "$pid"
      fi
      say "stopped $name (PID $pid)"
    fi
    rm -f "$DIR/run/$name.pid"
  done
  if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
    rm "$SYSTEM_CONF"
  fi
}

status() {
  local down=0
  for name in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$name"); then
      say "$name runs (PID $pid)"
    else
      say "$name is not running"
      down=1
    fi
  done
  [[ $down -eq 0 ]] && sinfo -N -o "%N %P %T %c %m"
  return $down
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status (cluster files in \$SLURM_LOCAL_DIR, default .slurm-local/)" ;;
esac
