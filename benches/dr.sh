#!/usr/bin/env bash
# Disaster-recovery operations on one `single` checkpoint (default 2 GiB), in one run:
#  - copy of the local repository into S3 (a local Garage, scripts/s3-server.sh, state under
#    $WORK): seconds and throughput; a second copy (nothing to send);
#  - restore vs `drill` (through the restore pipeline into a hashing sink) vs
#    `drill --target` (to disk, read back): the measured RTO next to restore's own time;
#  - a restore killed half-way (kill -9 after half of a full restore's time), then run again
#    with --overwrite: what it resumed and how long the rest took;
#  - `watch --settle 2s`: the delay from a new checkpoint's last write to its snapshot.
#
#   bash benches/dr.sh                       # 2 GiB, in /tmp
#   SIZE=512MiB WORK=/dev/shm/dr bash benches/dr.sh
set -euo pipefail
export TVAULT_PASSWORD=${TVAULT_PASSWORD:-bench} TVAULT_TO_PASSWORD=${TVAULT_PASSWORD:-bench}
SIZE=${SIZE:-2GiB}
WORK=${WORK:-/tmp/tvault-dr}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p tvault -p tvault-workload --bin tvault --bin tvault-gen
B=$PWD/target/release/tvault
rm -rf "$WORK"; mkdir -p "$WORK"
export XDG_CACHE_HOME=$WORK/cache
target/release/tvault-gen single "$WORK/ckpt" --size "$SIZE" >/dev/null
cat "$WORK/ckpt"/* >/dev/null
bytes=$(du -sb --apparent-size "$WORK/ckpt" | cut -f1)
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
gbs() { python3 -c "print(f'{$1 / ($3 - $2) / 1e9:.2f}')"; }
field() { python3 -c "import json,sys; v = json.load(open('$1'))$2; print(f'{v:.2f}' if isinstance(v, float) else v)"; }
echo "input: $bytes bytes ($SIZE single), $WORK ($(df -T "$WORK" | awk 'NR==2 {print $2}')), $(nproc) cores"

R=$WORK/repo
$B --repo "$R" init -q
$B --repo "$R" -q --json backup "$WORK/ckpt" >"$WORK/backup.json"
ID=$(field "$WORK/backup.json" "['id']")
repo_bytes=$(du -sb "$R" | cut -f1)

# Copy into S3.
export TVAULT_S3_DIR=$WORK/s3 TVAULT_TEST_S3_ENV=$WORK/s3/env
trap 'scripts/s3-server.sh stop >/dev/null 2>&1 || true' EXIT
eval "$(scripts/s3-server.sh start)"
S3="s3:$TVAULT_TEST_S3_ENDPOINT/$TVAULT_TEST_S3_BUCKET/replica"
$B --repo "$S3" init -q
t0=$(now); $B --repo "$R" -q --json copy --to "$S3" >"$WORK/copy.json"; t1=$(now)
echo "copy local -> S3:        $(secs "$t0" "$t1") s, $(gbs "$repo_bytes" "$t0" "$t1") GB/s of repository ($repo_bytes bytes; sent $(field "$WORK/copy.json" "['bytes_sent']"))"
t0=$(now); $B --repo "$R" -q copy --to "$S3"; t1=$(now)
echo "copy again (no change):  $(secs "$t0" "$t1") s"
scripts/s3-server.sh stop >/dev/null; trap - EXIT

# Restore, drill, drill --target.
t0=$(now); $B --repo "$R" -q restore "$ID" "$WORK/restored"; t1=$(now)
cmp "$WORK/restored/ckpt/model.safetensors" "$WORK/ckpt/model.safetensors"
full=$(secs "$t0" "$t1")
echo "restore:                 $full s, $(gbs "$bytes" "$t0" "$t1") GB/s"
rm -rf "$WORK/restored"
$B --repo "$R" --json drill "$ID" >"$WORK/drill.json"
echo "drill (hashing sink):    RTO $(field "$WORK/drill.json" "['restore_seconds']") s (no disk writes)"
mkdir -p "$WORK/scratch"
$B --repo "$R" --json drill "$ID" --target "$WORK/scratch" >"$WORK/drill.json"
echo "drill --target:          RTO $(field "$WORK/drill.json" "['restore_seconds']") s, read back in $(field "$WORK/drill.json" "['check_seconds']") s"

# A restore killed half-way, then resumed.
half=$(python3 -c "print($full / 2)")
$B --repo "$R" -q restore "$ID" "$WORK/restored" & pid=$!
sleep "$half"; kill -9 $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
t0=$(now); $B --repo "$R" -q --json restore "$ID" "$WORK/restored" --overwrite >"$WORK/resume.json"; t1=$(now)
cmp "$WORK/restored/ckpt/model.safetensors" "$WORK/ckpt/model.safetensors"
echo "restore killed at ${half} s, rerun with --overwrite: $(secs "$t0" "$t1") s (resumed $(field "$WORK/resume.json" "['bytes_resumed']") bytes, kept $(field "$WORK/resume.json" "['bytes_kept']"))"
rm -rf "$WORK/restored"

# watch: a new checkpoint folder appears; from its last write to its snapshot (the time watch's
# log line stamps on it).
W=$WORK/watched; mkdir -p "$W"
$B --repo "$R" watch "$W" --settle 2s 2>"$WORK/watch.log" & wpid=$!
wait_for() { # condition…: polls it for up to 10 minutes
  for _ in $(seq 6000); do "$@" && return 0; sleep 0.1; done
  echo "dr: watch did not log what was expected:" >&2; cat "$WORK/watch.log" >&2; exit 1
}
wait_for grep -q " saved: \| no change " "$WORK/watch.log"
# A checkpoint the repository does not hold yet (another seed), written where watch looks.
target/release/tvault-gen single "$W/checkpoint-1" --size "$SIZE" --seed 2 >/dev/null; last=$(now)
saved_twice() { [ "$(grep -c " saved: " "$WORK/watch.log")" -ge 2 ]; }
wait_for saved_twice
kill -TERM $wpid; wait $wpid || true
stamp=$(grep " saved: " "$WORK/watch.log" | tail -1 | sed 's/^tvault: watch: \([^ ]*\) .*/\1/')
delay=$(python3 -c "import datetime; print(f'{datetime.datetime.fromisoformat(\"$stamp\".replace(\"Z\", \"+00:00\")).timestamp() - $last:.2f}')")
echo "watch --settle 2s:       snapshot written $delay s after the checkpoint's last write ($(grep " saved: " "$WORK/watch.log" | tail -1 | sed 's/.*saved: //'))"
rm -rf "$WORK"
