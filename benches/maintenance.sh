#!/usr/bin/env bash
# verify and prune on a repository of several checkpoints: the `frozen` series (half the
# tensors change per step; SCENARIO=finetune or fulltrain for series stored as deltas), one
# snapshot per step, then `verify --read-data`, a dry-run and a real `prune --keep-last 1`, and
# a final `verify --read-data`, and the repository's size against a fresh backup of the last step.
#
#   bash benches/maintenance.sh                        # 4 checkpoints of 2 GiB, in /tmp
#   STEPS=3 SIZE=512MiB WORK=/dev/shm/tm bash benches/maintenance.sh
#   SCENARIO=finetune STEPS=10 SIZE=256MiB bash benches/maintenance.sh
#   SCENARIO=fulltrain FLAGS=--dense-deltas STEPS=10 SIZE=256MiB bash benches/maintenance.sh
set -euo pipefail
# Repositories are encrypted by default (as `init` makes them): the benches give the password.
export TVAULT_PASSWORD=${TVAULT_PASSWORD:-bench}
SIZE=${SIZE:-2GiB}
STEPS=${STEPS:-4}
SCENARIO=${SCENARIO:-frozen}
WORK=${WORK:-/tmp/tvault-maintenance}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p tvault -p tvault-workload --bin tvault --bin tvault-gen
B=$PWD/target/release/tvault
GEN=$PWD/target/release/tvault-gen
TIME=/usr/bin/time
[ -x $TIME ] || { echo "maintenance: GNU time is needed (apt-get install time)" >&2; exit 1; }
rm -rf "$WORK"; mkdir -p "$WORK"
$B --repo "$WORK/repo" init -q
for step in $(seq 0 $((STEPS - 1))); do
  $GEN "$SCENARIO" "$WORK/ckpt" --size "$SIZE" --step "$step" >/dev/null
  # shellcheck disable=SC2086 # FLAGS: extra backup options, as words
  $B --repo "$WORK/repo" -q backup "$WORK/ckpt" --tag "step$step" ${FLAGS:-}
done
repo_bytes() { du -sb "$WORK/repo" | cut -f1; }
measure() { # label, command...
  local label=$1; shift
  $TIME -f "%e %M" -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
  read -r secs kib <"$WORK/time"
  printf '%-36s %8.2f s %8d MiB peak RSS\n' "$label" "$secs" $((kib / 1024))
}
before=$(repo_bytes)
echo "repository: $STEPS snapshots of a $SIZE $SCENARIO checkpoint, $before bytes"
measure "verify --read-data" $B --repo "$WORK/repo" verify --read-data
echo "  $(tail -1 "$WORK/out")  =>  $(python3 -c "print(round($before / $(cut -d' ' -f1 "$WORK/time") / 1e9, 2))") GB/s of repository"
measure "prune --keep-last 1 --dry-run" $B --repo "$WORK/repo" prune --keep-last 1 --dry-run
measure "prune --keep-last 1" $B --repo "$WORK/repo" prune --keep-last 1
tail -2 "$WORK/out" | sed 's/^/  /'
after=$(repo_bytes)
measure "verify --read-data (after prune)" $B --repo "$WORK/repo" verify --read-data
$B --repo "$WORK/fresh" init -q
$B --repo "$WORK/fresh" -q backup "$WORK/ckpt"
fresh=$(du -sb "$WORK/fresh" | cut -f1)
echo "after prune: $after bytes; a fresh backup of the last checkpoint alone: $fresh bytes ($(python3 -c "print(round(100 * ($after / $fresh - 1), 2))") %)"
rm -rf "$WORK"
