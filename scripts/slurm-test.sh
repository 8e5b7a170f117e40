#!/usr/bin/env bash
# kiln's Slurm test (part of scripts/test.sh): installs Slurm and munge from
# Debian's packages if they are missing, starts a one-node cluster (munged,
# slurmctld, slurmd; four stand-in GPUs so the script's `--gres=gpu:1` is
# honoured), runs the ignored test crates/kiln-cli/tests/slurm_cluster.rs
# against it (a 4-task `kiln discover slurm` array with the replay
# evaluator, compared with one process), and stops every daemon it started.
# Needs root (apt-get and the daemons); fails, never skips, without it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
  || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: the Slurm test needs slurmctld, slurmd, sbatch and munged; install Debian's" >&2
    echo "       slurmctld slurmd slurm-client munge packages (or run this as root with apt-get)" >&2
    exit 1
  fi
  echo "== installing Slurm and munge (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null; }
fi
[ "$(id -u)" = 0 ] || { echo "error: the Slurm test starts munged and slurmd: run it as root" >&2; exit 1; }

work=$(mktemp -d /tmp/kiln-slurm.XXXXXX)
stop() {
  for f in "$work"/slurmd.pid "$work"/slurmctld.pid "$work"/munge/munged.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 1
  rm -rf "$work"
}
trap stop EXIT

host=$(hostname)
# Ports away from a system Slurm's defaults (6817/6818), should one run here.
ctld_port=${KILN_SLURM_CTLD_PORT:-16817}
d_port=${KILN_SLURM_D_PORT:-16818}
chmod 755 "$work"  # munged runs as munge and must reach its folder
mkdir -p "$work"/{state,spool,log,dev,munge}
touch "$work"/dev/gpu{0,1,2,3}
chown munge:munge "$work/munge"
chmod 711 "$work/munge"  # munged wants its socket folder reachable by all
# A key of its own, so the test neither needs nor touches /etc/munge's.
dd if=/dev/urandom bs=1 count=1024 of="$work/munge/munge.key" status=none
chown munge:munge "$work/munge/munge.key"
chmod 400 "$work/munge/munge.key"
socket="$work/munge/munge.socket"
su -s /bin/sh munge -c "/usr/sbin/munged --key-file=$work/munge/munge.key \
  --socket=$socket --pid-file=$work/munge/munged.pid --log-file=$work/munge/munged.log \
  --seed-file=$work/munge/munge.seed"

cat > "$work/slurm.conf" <<CONF
ClusterName=kilntest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
GresTypes=gpu
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) Gres=gpu:4 State=UNKNOWN
PartitionName=kiln Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
# Stand-in GPUs: Slurm drops a GPU without a device file.
echo "Name=gpu File=$work/dev/gpu[0-3]" > "$work/gres.conf"
export SLURM_CONF="$work/slurm.conf"

echo "== starting a one-node Slurm ($host, ports $ctld_port/$d_port)"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && break
  sleep 1
done
if [ "${state:-}" != idle ]; then
  echo "error: the Slurm node did not come up (state '${state:-none}'); logs follow" >&2
  tail -n 20 "$work"/log/*.log >&2
  exit 1
fi
sinfo

echo "== the Slurm array test"
log="$work/test.log"
rc=0
cargo test --locked -p kiln-cli --test slurm_cluster -- --ignored --nocapture 2>&1 | tee "$log" || rc=$?
if [ $rc != 0 ] || ! grep -q "^test a_slurm_array_of_shards_equals_one_process ... ok" "$log"; then
  echo "error: the Slurm array test did not pass; Slurm's logs follow" >&2
  tail -n 30 "$work"/log/slurmctld.log "$work"/log/slurmd.log >&2
  exit 1
fi
echo "Slurm array test: PASS"
