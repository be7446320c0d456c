#!/usr/bin/env bash
# End-to-end figures on generated checkpoints, beside a `tar | zstd -3 -T0` baseline measured
# in the same run: first backup, incremental backup of an unchanged tree, restore (all of the
# `single` workload), the second snapshot of `frozen`, and peak memory against file size.
#
#   bash benches/e2e.sh                 # 2 GiB checkpoints, work files in /tmp/tvault-bench
#   SIZE=512MiB WORK=/dev/shm/tb bash benches/e2e.sh   # smaller, on tmpfs (CPU cost only)
set -euo pipefail
SIZE=${SIZE:-2GiB}
WORK=${WORK:-/tmp/tvault-bench}
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin tvault --example gen
B=$PWD/target/release/tvault
GEN=$PWD/target/release/examples/gen
command -v zstd >/dev/null || { echo "e2e: zstd is needed for the baseline (apt-get install zstd)" >&2; exit 1; }
TIME=/usr/bin/time
[ -x $TIME ] || { echo "e2e: GNU time is needed (apt-get install time)" >&2; exit 1; }

rm -rf "$WORK"; mkdir -p "$WORK/data"
$GEN single "$WORK/data/single/ckpt" --size "$SIZE" >/dev/null
$GEN frozen "$WORK/data/frozen/ckpt" --size "$SIZE" --step 0 >/dev/null
cp "$WORK/data/frozen/ckpt/model.safetensors" "$WORK/data/frozen0.safetensors"
$GEN frozen "$WORK/data/frozen1/ckpt" --size "$SIZE" --step 1 >/dev/null
cat "$WORK"/data/single/ckpt/* >/dev/null   # page cache warm

bytes=$(du -sb "$WORK/data/single/ckpt" | cut -f1)
measure() { # label, command...: prints "label  seconds  GB/s  peak-MiB"
  local label=$1; shift
  $TIME -f "%e %M" -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
  read -r secs kib <"$WORK/time"
  printf '%-34s %8.2f s %8.2f GB/s %8d MiB peak RSS\n' "$label" "$secs" "$(python3 -c "print($bytes / max($secs, 0.01) / 1e9)")" $((kib / 1024))
}
json() { python3 -c "import json; print(json.load(open('$WORK/out'))$1)"; }

echo "input: $bytes bytes per checkpoint, work dir $WORK"
measure "baseline tar | zstd -3 -T0" bash -c "tar -C '$WORK/data/single' -cf - ckpt | zstd -3 -T0 -q -o '$WORK/single.tar.zst'"
echo "  baseline stored: $(stat -c %s "$WORK/single.tar.zst") bytes"
$B --repo "$WORK/repo" init -q
measure "tvault backup (single, first)" $B --repo "$WORK/repo" --json backup "$WORK/data/single/ckpt"
echo "  stored: $(json "['bytes_added']") bytes = $(python3 -c "import json; print(round(json.load(open('$WORK/out'))['bytes_added'] / $bytes, 3))") of the input"
ID=$(json "['snapshot_id']")
measure "tvault backup (unchanged, 2nd)" $B --repo "$WORK/repo" --json backup "$WORK/data/single/ckpt"
echo "  bytes read: $(json "['bytes_read']"), bytes added: $(json "['bytes_added']"), kind: $(json "['kind']")"
measure "tvault restore (single)" $B --repo "$WORK/repo" -q restore "$ID" "$WORK/restored"
cmp "$WORK/restored/ckpt/model.safetensors" "$WORK/data/single/ckpt/model.safetensors"
rm -rf "$WORK/restored"

$B --repo "$WORK/frozen-repo" init -q
measure "tvault backup (frozen, step 0)" $B --repo "$WORK/frozen-repo" --json backup "$WORK/data/frozen/ckpt"
cp "$WORK/data/frozen1/ckpt/model.safetensors" "$WORK/data/frozen/ckpt/model.safetensors"
measure "tvault backup (frozen, step 1)" $B --repo "$WORK/frozen-repo" --json backup "$WORK/data/frozen/ckpt"
echo "  step 1 added: $(json "['bytes_added']") bytes = $(python3 -c "import json; print(round(json.load(open('$WORK/out'))['bytes_added'] / $bytes, 3))") of the checkpoint"

for g in 1 20; do
  mkdir -p "$WORK/sparse$g"; truncate -s ${g}G "$WORK/sparse$g/big.bin"
  $B --repo "$WORK/sparse-repo$g" init -q
  bytes=$((g << 30)) measure "tvault backup (${g} GiB of zeros)" $B --repo "$WORK/sparse-repo$g" -q backup "$WORK/sparse$g"
done
rm -rf "$WORK"
