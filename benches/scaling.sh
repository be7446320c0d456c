#!/usr/bin/env bash
# How backup, restore and verify scale from one core to two: each run pinned with `taskset`
# (and `--threads` to match), 1-core and 2-core runs interleaved, median of ROUNDS (default 5).
# Prints both medians, the speed-up, the serial share it implies by Amdahl's law
# (s = (2/speedup - 1)), and what that projects for 16 and 64 cores (a projection, not a
# measurement: it assumes the same serial share and that nothing else, such as memory bandwidth
# or the disk, caps first).
#
#   bash benches/scaling.sh                       # 1 GiB single on tmpfs (/dev/shm)
#   SIZE=2GiB WORK=/tmp/scale bash benches/scaling.sh
set -euo pipefail
# Repositories are encrypted by default (as `init` makes them): the benches give the password.
export TVAULT_PASSWORD=${TVAULT_PASSWORD:-bench}
shopt -s inherit_errexit   # a failing run inside $(secs …) stops the bench, not times as fast
SIZE=${SIZE:-1GiB}
WORK=${WORK:-/dev/shm/tvault-scaling}
ROUNDS=${ROUNDS:-5}
cd "$(dirname "$0")/.."
command -v taskset >/dev/null || { echo "scaling: taskset is needed (util-linux)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "scaling: needs 2 cores" >&2; exit 1; }
cargo build --release --quiet -p tvault -p tvault-workload --bin tvault --bin tvault-gen
B=$PWD/target/release/tvault
rm -rf "$WORK"; mkdir -p "$WORK"
target/release/tvault-gen single "$WORK/ckpt" --size "$SIZE" >/dev/null
cat "$WORK/ckpt"/* >/dev/null
bytes=$(du -sb --apparent-size "$WORK/ckpt" | cut -f1)

secs() { # cores, command...: wall seconds of one pinned run
  local cores=$1; shift
  local cpus=0; [ "$cores" = 2 ] && cpus=0,1
  local t0 t1
  t0=$(date +%s.%N)
  taskset -c "$cpus" "$@" --threads "$cores" >/dev/null 2>&1
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

echo "input: $bytes bytes ($SIZE single), $WORK, rounds: $ROUNDS, runs interleaved 1 core / 2 cores"
printf '%-10s %10s %10s %9s %8s %12s %12s\n' step "1 core" "2 cores" speed-up serial "16 (proj.)" "64 (proj.)"
for step in backup restore verify; do
  one=(); two=()
  for r in $(seq "$ROUNDS"); do
    for cores in 1 2; do
      repo="$WORK/repo-$cores"
      case $step in
        backup)
          rm -rf "$repo"; $B --repo "$repo" init -q
          t=$(secs "$cores" $B --repo "$repo" -q backup "$WORK/ckpt") ;;
        restore)
          [ -d "$repo" ] || { $B --repo "$repo" init -q; $B --repo "$repo" -q backup "$WORK/ckpt"; }
          id=$($B --repo "$repo" --json snapshots | python3 -c "import json,sys; print(json.load(sys.stdin)[-1]['id'])")
          rm -rf "$WORK/out"
          t=$(secs "$cores" $B --repo "$repo" -q restore "$id" "$WORK/out") ;;
        verify)
          t=$(secs "$cores" $B --repo "$repo" -q verify --read-data) ;;
      esac
      if [ "$cores" = 1 ]; then one+=("$t"); else two+=("$t"); fi
    done
  done
  m1=$(median "${one[@]}"); m2=$(median "${two[@]}")
  python3 - "$step" "$m1" "$m2" "$bytes" <<'PY'
import sys
step, m1, m2, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
speedup = m1 / m2
serial = min(max(2 / speedup - 1, 0.0), 1.0)
proj = lambda c: (n / m1) * 1 / (serial + (1 - serial) / c) / 1e9
print(f"{step:<10} {n/m1/1e9:7.2f} GB/s {n/m2/1e9:6.2f} GB/s {speedup:8.2f}x {serial:8.2f} {proj(16):9.2f} GB/s {proj(64):9.2f} GB/s")
PY
done
rm -rf "$WORK"
