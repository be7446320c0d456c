#!/usr/bin/env bash
# End-to-end figures on generated checkpoints (SCENARIOS.md), beside baselines and physical
# limits measured in the same run:
#   - limits: plain read of the checkpoint (`cat`), BLAKE3 alone on every core (examples/b3),
#     sequential write speed of the work directory's filesystem (`dd conv=fsync`);
#   - baselines: `tar | zstd -3 -T0` and back (`zstd -d | tar -x`); restic and borg when
#     installed (backup, unchanged backup, restore; skipped otherwise);
#   - tvault: first backup, incremental backup of the unchanged tree, restore,
#     `verify --read-data` (when this build has it; also as GB/s of repository), the series
#     (below), and peak memory backing up 1 GiB and 20 GiB files (sparse zeros: memory
#     must not follow size).
# Series: steps 0, 1, 2 of `frozen`, `finetune`, `fulltrain` and `resave` in one path, and the
# `finetune` series in the layouts training runs write (`rolling`: a new folder per step;
# `sharded`: 4 shards + index per folder; `resharded`: 2, 3, 4 shards), each in its own
# repository: what each step adds (share of the checkpoint) and its backup speed against the
# `single` first backup, then the restore of the last step, its `drill` (the same without disk
# writes) and `verify --read-data` of the repository (per repository byte), each as a ratio to
# the `single` checkpoint's, the two timed in turns, fastest of REPS (5) each.
# Each line: seconds, input bytes/s, peak RSS. The page cache is warm (the input is read first).
#
#   bash benches/e2e.sh                                  # 2 GiB checkpoints, on disk (/tmp)
#   WORK=/dev/shm/tvault-bench bash benches/e2e.sh       # on tmpfs: the CPU cost alone
#   SIZE=512MiB bash benches/e2e.sh                      # smaller checkpoints
#   BEFORE=/path/to/old/tvault bash benches/e2e.sh       # also time another build, interleaved
#   ONLY=single bash benches/e2e.sh                      # limits, baselines and the single checkpoint only
#   ONLY=series bash benches/e2e.sh                      # the single checkpoint (the reference)
#                                                        # and the series (with BEFORE: its
#                                                        # `rolling` series too)
#   ONLY=keyframes SIZE=256MiB bash benches/e2e.sh       # a STEPS-step (40) `finetune` series:
#                                                        # each step's added share and backup
#                                                        # time, max/mean, the restore of the
#                                                        # first and the last step (the cost of
#                                                        # chains) (with BEFORE: that build's too)
#   ONLY=keyframes LAYOUT=rolling SIZE=256MiB bash ...  # the same, a new checkpoint-N/ folder per
#                                                        # step, the previous one kept beside it
#   ONLY=keyframes FLAGS='--max-chain 8' SIZE=256MiB … # the same with backup options (here:
#                                                        # chains bounded to 8 links; a BEFORE
#                                                        # build gets them too)
#   S3=1 bash benches/e2e.sh                             # S3 mode (below), then stop
#   PLAIN=1 bash benches/e2e.sh                          # also a plaintext repository (the cost of encryption)
#
# S3 mode: a local Garage (scripts/s3-server.sh, state under $WORK) holds the repositories.
# First backup, restore and `verify --read-data` of the `single` checkpoint: tvault into a
# local directory, tvault into the bucket, and restic (when installed) into the same bucket,
# each with its defaults (restic encrypts), in the same run.
set -euo pipefail
# Repositories are encrypted by default (as `init` makes them): the benches give the password.
export TVAULT_PASSWORD=${TVAULT_PASSWORD:-bench}
SIZE=${SIZE:-2GiB}
WORK=${WORK:-/tmp/tvault-bench}
ROUNDS=${ROUNDS:-1}
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin tvault -p tvault -p tvault-workload -p tvault-core --bin tvault-gen --example b3
B=$PWD/target/release/tvault
GEN=$PWD/target/release/tvault-gen
B3=$PWD/target/release/examples/b3
command -v zstd >/dev/null || { echo "e2e: zstd is needed for the baseline (apt-get install zstd)" >&2; exit 1; }
TIME=/usr/bin/time
[ -x $TIME ] || { echo "e2e: GNU time is needed (apt-get install time)" >&2; exit 1; }

rm -rf "$WORK"; mkdir -p "$WORK/data"
$GEN single "$WORK/data/single/ckpt" --size "$SIZE" >/dev/null
CKPT=$WORK/data/single/ckpt
cat "$CKPT"/* >/dev/null   # page cache warm

bytes=$(du -sb --apparent-size "$CKPT" | cut -f1)
gbs() { python3 -c "print(f'{$1 / max($2, 0.01) / 1e9:.2f}')"; }
measure() { # label, command...: prints "label  seconds  GB/s  peak-MiB"
  local label=$1; shift
  $TIME -f "%e %M" -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
  read -r secs kib <"$WORK/time"
  printf '%-36s %7.2f s %7s GB/s %6d MiB peak RSS\n' "$label" "$secs" "$(gbs "$bytes" "$secs")" $((kib / 1024))
  LAST_SECS=$secs LAST_RATE=$(python3 -c "print($bytes / max($secs, 0.01))")
}
ratio() { # rate, reference rate (either may be empty): "1.23" or "n/a"
  if [ -n "$1" ] && [ -n "$2" ]; then python3 -c "print(f'{$1 / $2:.2f}')"; else echo n/a; fi
}
# The `single` checkpoint's rates in this run (set by run_tvault), which the series compare to.
SINGLE_BACKUP_RATE='' SINGLE_REPO='' SINGLE_ID=''
json() { python3 -c "import json; print(json.load(open('$WORK/out'))$1)"; }
share() { python3 -c "print(round($1 / $bytes, 3))"; }

echo "input: $bytes bytes per checkpoint, work dir $WORK ($(df -T "$WORK" | awk 'NR==2 {print $2}')), $(nproc) cores"

if [ -n "${S3:-}" ]; then
  export TVAULT_S3_DIR=$WORK/s3 TVAULT_TEST_S3_ENV=$WORK/s3/env
  trap 'scripts/s3-server.sh stop >/dev/null 2>&1 || true' EXIT
  s3_env=$(scripts/s3-server.sh start)   # set -e stops here if the server does not start
  eval "$s3_env"
  export XDG_CACHE_HOME=$WORK/cache
  s3_round() { # label, repository, tool: backup, restore and verify of the single checkpoint
    local label=$1 repo=$2 tool=$3
    if [ "$tool" = restic ]; then
      local r=(restic -q -r "$repo" -o s3.region="$AWS_REGION" -o s3.bucket-lookup=path)
      "${r[@]}" init >/dev/null
      measure "restic backup ($label)" "${r[@]}" backup "$CKPT"
      measure "restic restore ($label)" "${r[@]}" restore latest --target "$WORK/restored"
      cmp "$WORK/restored$CKPT/model.safetensors" "$CKPT/model.safetensors"
      measure "restic check --read-data ($label)" "${r[@]}" check --read-data
    else
      $B --repo "$repo" init -q
      measure "tvault backup ($label)" $B --repo "$repo" --json backup "$CKPT"
      local id; id=$(json "['snapshot_id']")
      measure "tvault restore ($label)" $B --repo "$repo" -q restore "$id" "$WORK/restored"
      cmp "$WORK/restored/ckpt/model.safetensors" "$CKPT/model.safetensors"
      measure "tvault verify --read-data ($label)" $B --repo "$repo" -q verify --read-data
    fi
    rm -rf "$WORK/restored"
  }
  echo "== S3 (Garage at $TVAULT_TEST_S3_ENDPOINT) against a local directory"
  for round in $(seq "$ROUNDS"); do
    s3_round "local directory" "$WORK/repo-local" tvault
    rm -rf "$WORK/repo-local"
    s3_round "S3" "s3:$TVAULT_TEST_S3_ENDPOINT/$TVAULT_TEST_S3_BUCKET/tvault-$round" tvault
    if command -v restic >/dev/null; then
      export RESTIC_PASSWORD=bench
      s3_round "S3" "s3:$TVAULT_TEST_S3_ENDPOINT/$TVAULT_TEST_S3_BUCKET/restic-$round" restic
    else
      echo "  restic: not installed, skipped (apt-get install restic)"
    fi
  done
  rm -rf "$WORK"
  exit 0
fi
run_tvault() { # name, binary, init options
  local name=$1 bin=$2 repo=$WORK/repo-$1
  echo "== $name ($bin ${3:-})"
  rm -rf "$repo"; $bin --repo "$repo" init -q ${3:-}
  measure "$name backup (single, first)" $bin --repo "$repo" --json backup "$CKPT"
  if [ "$name" = tvault ]; then SINGLE_BACKUP_RATE=$LAST_RATE; fi
  echo "  stored: $(json "['bytes_added']") bytes = $(share "$(json "['bytes_added']")") of the input"
  local id; id=$(json "['snapshot_id']")
  measure "$name backup (unchanged, 2nd)" $bin --repo "$repo" --json backup "$CKPT"
  echo "  bytes read: $(json "['bytes_read']"), bytes added: $(json "['bytes_added']")"
  measure "$name restore (single)" $bin --repo "$repo" -q restore "$id" "$WORK/restored"
  cmp "$WORK/restored/ckpt/model.safetensors" "$CKPT/model.safetensors"
  rm -rf "$WORK/restored"
  if $bin verify --help >/dev/null 2>&1; then
    local repo_bytes; repo_bytes=$(du -sb --apparent-size "$repo" | cut -f1)
    measure "$name verify --read-data" $bin --repo "$repo" -q verify --read-data
    echo "  of repository: $repo_bytes bytes, $(gbs "$repo_bytes" "$LAST_SECS") GB/s"
  else
    echo "  verify --read-data: not in this build, skipped"
  fi
  # This build's repository stays for the series, which time their steps against it in turns.
  if [ "$name" = tvault ]; then SINGLE_REPO=$repo SINGLE_ID=$id; else rm -rf "$repo"; fi
}

# Seconds of one run of a command (its output dropped).
seconds() {
  $TIME -f "%e" -o "$WORK/time1" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
  cat "$WORK/time1"
}
# `restore`, `drill` (the restore pipeline into a hashing sink: no disk writes) or `verify
# --read-data` of a series (its last step; for verify, its repository) and of the `single`
# checkpoint, taken in turns REPS times (default 5): PAIR_RATIO is the ratio of the fastest
# rate per byte of each, PAIR_SECS the fastest times. Turns and the fastest run keep this
# machine's drifts (up to 30 % between two runs) out of the ratio.
# REF_REPO, REF_ID, REF_BIN: another reference than the `single` checkpoint.
pair() { # kind, series bytes, single bytes, binary, series repository, series snapshot, [restore args]
  local kind=$1 bytes_s=$2 bytes_1=$3 bin=$4 repo=$5 id=$6; shift 6
  local ref_repo=${REF_REPO:-$SINGLE_REPO} ref_id=${REF_ID:-$SINGLE_ID} ref_bin=${REF_BIN:-$B}
  local best_s=1e9 best_1=1e9 t
  for _ in $(seq "${REPS:-5}"); do
    rm -rf "$WORK/restored"
    case $kind in
      restore) t=$(seconds $bin --repo "$repo" -q restore "$id" "$WORK/restored" "$@") ;;
      drill) t=$(seconds $bin --repo "$repo" -q drill "$id") ;;
      verify) t=$(seconds $bin --repo "$repo" -q verify --read-data) ;;
    esac
    best_s=$(python3 -c "print(min($best_s, $t))")
    rm -rf "$WORK/restored"
    case $kind in
      restore) t=$(seconds $ref_bin --repo "$ref_repo" -q restore "$ref_id" "$WORK/restored") ;;
      drill) t=$(seconds $ref_bin --repo "$ref_repo" -q drill "$ref_id") ;;
      verify) t=$(seconds $ref_bin --repo "$ref_repo" -q verify --read-data) ;;
    esac
    best_1=$(python3 -c "print(min($best_1, $t))")
  done
  rm -rf "$WORK/restored"
  PAIR_SECS="$best_s / $best_1 s"
  PAIR_RATIO=$(python3 -c "print(f'{($bytes_s / max($best_s, 0.01)) / ($bytes_1 / max($best_1, 0.01)):.2f}')")
}

# Model-aware storage: each series' steps 0, 1, 2 backed up one after the other into its own
# repository: what every further step adds (a share of that step's checkpoint) and its backup
# speed against the `single` first backup, then the restore of the last step (deltas resolved
# through their chains), its `drill` and `verify --read-data` of the repository (per repository
# byte, and per byte of the 3 steps' checkpoints, all of which it decodes and re-hashes), each as a
# ratio to the `single` checkpoint's (1.00: as fast; see `pair`). One-path scenarios
# write every step over `ckpt/` (each file's parent version is at the same path); the layout
# scenarios write a new `checkpoints/checkpoint-N/` per step, deleting the older folders, and
# `checkpoints/` is backed up (bases are then found by tensor identity); the last step's folder
# alone is restored (`--include`, when the build has it). NAME and BIN: another build than
# this one.
series() { # scenario, label, [extra backup flags]
  local scenario=$1 label=$2 flags=${3:-} name=${NAME:-tvault} bin=${BIN:-$B}
  local shown=$scenario${3:+ $3}
  local top="$WORK/data/$scenario" repo="$WORK/$scenario-repo" src rel shares=() backup_ratio=''
  local ckpt_bytes=0
  echo "== $name: $shown ($label)"
  rm -rf "$top" "$repo"; $bin --repo "$repo" init -q
  for step in 0 1 2; do
    case $scenario in
      rolling | sharded | resharded) src=$top/checkpoints rel=checkpoints/checkpoint-$(((step + 1) * 500)) ;;
      *) src=$top/ckpt rel=ckpt ;;
    esac
    $GEN "$scenario" "$src" --size "$SIZE" --step "$step" >/dev/null
    local total; total=$(du -sb --apparent-size "$top/$rel" | cut -f1)
    ckpt_bytes=$((ckpt_bytes + total))
    # shellcheck disable=SC2086 # flags: words
    bytes=$total measure "$name backup ($shown, step $step)" $bin --repo "$repo" --json backup $flags "$src"
    local added; added=$(json "['bytes_added']")
    shares+=("$(python3 -c "print(f'{$added / $total:.4f}')")")
    local speed=''
    if [ "$step" -gt 0 ]; then
      backup_ratio=$(ratio "$LAST_RATE" "$SINGLE_BACKUP_RATE")
      speed=", backed up at ${backup_ratio}x the single first backup's speed"
    fi
    echo "  step $step added: $added bytes = ${shares[step]} of the checkpoint$speed; stored: $(json "['stored']")"
  done
  local id what=$rel include=()
  id=$(json "['snapshot_id']")
  if [ "$rel" != ckpt ]; then
    if $bin restore --help 2>/dev/null | grep -q -- --include; then
      include=(--include "$rel")
    else
      what=checkpoints   # an older build: the whole tree, both kept folders
    fi
  fi
  bytes=$(du -sb --apparent-size "$top/$what" | cut -f1) measure "$name restore ($shown, step 2)" \
    $bin --repo "$repo" -q restore "$id" "$WORK/restored" "${include[@]}"
  diff -r "$top/$what" "$WORK/restored/$what" >/dev/null || { echo "e2e: $scenario restore differs" >&2; exit 1; }
  local single_bytes restore_ratio=n/a drill_ratio=n/a verify_ratio=n/a verify_ckpt_ratio=n/a
  single_bytes=$(du -sb --apparent-size "$CKPT" | cut -f1)
  if [ -n "${SINGLE_REPO:-}" ]; then
    pair restore "$(du -sb --apparent-size "$top/$what" | cut -f1)" "$single_bytes" $bin "$repo" "$id" "${include[@]}"
    restore_ratio=$PAIR_RATIO
    echo "  restore of step 2 against the single checkpoint's, in turns, fastest of ${REPS:-5} each ($PAIR_SECS): ${restore_ratio}x its speed"
    if $bin drill --help >/dev/null 2>&1; then
      # The whole snapshot (a layout's previous folder too), without writing it.
      pair drill "$(du -sb --apparent-size "$src" | cut -f1)" "$single_bytes" $bin "$repo" "$id"
      drill_ratio=$PAIR_RATIO
      echo "  drill of step 2 (no disk writes; $PAIR_SECS): ${drill_ratio}x the single checkpoint's speed"
    fi
    if $bin verify --help >/dev/null 2>&1; then
      local repo_bytes single_repo_bytes
      repo_bytes=$(du -sb --apparent-size "$repo" | cut -f1)
      single_repo_bytes=$(du -sb --apparent-size "$SINGLE_REPO" | cut -f1)
      pair verify "$repo_bytes" "$single_repo_bytes" $bin "$repo" "$id"
      verify_ratio=$PAIR_RATIO
      echo "  verify --read-data of $repo_bytes repository bytes ($PAIR_SECS): ${verify_ratio}x the single repository's speed per byte"
      # The same per checkpoint byte: every step's content is decoded and re-hashed.
      verify_ckpt_ratio=$(python3 -c "print(f'{$verify_ratio * $ckpt_bytes * $single_repo_bytes / ($repo_bytes * $single_bytes):.2f}')")
      echo "  that is ${verify_ckpt_ratio}x per checkpoint byte (the 3 steps' $ckpt_bytes bytes)"
    fi
  fi
  SUMMARY+=("$(printf '%-7s %-24s %8s %8s %8s %8s %8s %8s %8s' "$name" "$shown" "${shares[1]}" "${shares[2]}" \
    "$backup_ratio" "$restore_ratio" "$drill_ratio" "$verify_ratio" "$verify_ckpt_ratio")")
  rm -rf "$WORK/restored" "$repo" "$top"
}
run_series() {
  SUMMARY=()
  series frozen "about half the tensors bit-identical between steps"
  series finetune "about 1 % of bf16 values change per step, one path"
  series rolling "the finetune series, a new folder per step"
  series sharded "the finetune series in 4 shards + index, a new folder per step"
  series resharded "the finetune series over 2, 3, 4 shards, a new folder per step"
  series fulltrain "fp32 weights + Adam moments, every value changes a little"
  if $B backup --help | grep -q -- --dense-deltas; then
    series fulltrain "the same, stored as dense XORs with keyframes" --dense-deltas
  fi
  series resave "the same tensors saved in another order with other metadata"
  if [ -n "${BEFORE:-}" ]; then
    NAME=before BIN=$BEFORE series rolling "the finetune series, a new folder per step"
  fi
  echo "== series: step adds (share of the checkpoint); step 2's backup, restore and drill speed, verify's"
  echo "   per repository byte and per checkpoint byte (the 3 steps), each / single's"
  printf '%-7s %-24s %8s %8s %8s %8s %8s %8s %8s\n' build series step1 step2 backup restore drill verify verify/ck
  printf '%s\n' "${SUMMARY[@]}"
}
if [ "${ONLY:-}" = series ]; then
  run_tvault tvault "$B"
  run_series
  rm -rf "$WORK"
  exit 0
fi
# Staggered keyframes: a long `finetune` series in one path; what each step adds (as a share of
# the checkpoint), and the largest step after the first against the mean of those steps (the
# goal: at most 2). Chains end at their depth bound; without staggering, all in the same step.
keyframes() { # name, binary
  # LAYOUT=rolling: the same steps, each in a new checkpoint-N/ folder beside the previous one
  # (as a trainer keeps it), all of ckpt/ backed up.
  local name=$1 bin=$2 top="$WORK/data/keyframes" repo="$WORK/keyframes-repo" adds=() first
  local layout=${LAYOUT:-finetune} newest=
  echo "== $name: $layout${FLAGS:+ $FLAGS}, ${STEPS:-40} steps ($([ "$layout" = finetune ] && echo "in one path" || echo "a new folder per step"))"
  rm -rf "$top" "$repo"; $bin --repo "$repo" init -q
  for ((step = 0; step < ${STEPS:-40}; step++)); do
    [ "$layout" = finetune ] && rm -rf "$top/ckpt"
    $GEN "$layout" "$top/ckpt" --size "$SIZE" --step "$step" >/dev/null
    [ "$layout" = finetune ] || newest=checkpoint-$(( (step + 1) * 500 ))
    local total; total=$(du -sb --apparent-size "$top/ckpt/$newest" | cut -f1)
    # shellcheck disable=SC2086 # FLAGS: words
    bytes=$total measure "$name backup (step $step)" $bin --repo "$repo" --json backup ${FLAGS:-} "$top/ckpt" >/dev/null
    local added; added=$(json "['bytes_added']")
    adds+=("$added")
    [ "$step" -eq 0 ] && first=$(json "['snapshot_id']")
    echo "  step $step added $(python3 -c "print(f'{$added / $total:.4f}')") of the checkpoint; backup $LAST_SECS s"
  done
  python3 -c "
a = [int(x) for x in '${adds[*]}'.split()][1:]
m = sum(a) / len(a)
print(f'  steps 1..{len(a)}: mean {m / $total:.4f}, max {max(a) / $total:.4f} (step {a.index(max(a)) + 1}), max/mean {max(a) / m:.2f}')"
  local id; id=$(json "['snapshot_id']")
  # The cost of chains: the last step (every block at the end of a chain) against the first
  # (keyframes only), restored from the same repository (per byte restored: the last step of
  # a rolling series holds two folders), then both again in turns (`pair`).
  local last_bytes; last_bytes=$(du -sb --apparent-size "$top/ckpt" | cut -f1)
  bytes=$last_bytes measure "$name restore (step $((${STEPS:-40} - 1)))" $bin --repo "$repo" -q restore "$id" "$WORK/restored"
  cmp -s "$WORK/restored/ckpt/$newest/model.safetensors" "$top/ckpt/$newest/model.safetensors" || { echo "e2e: keyframes restore differs" >&2; exit 1; }
  REF_REPO=$repo REF_ID=$first REF_BIN=$bin pair restore "$last_bytes" "$total" $bin "$repo" "$id"
  echo "  the last step restores at ${PAIR_RATIO}x the first step's speed (in turns, fastest of ${REPS:-5} each: $PAIR_SECS)"
  REF_REPO=$repo REF_ID=$first REF_BIN=$bin pair drill "$last_bytes" "$total" $bin "$repo" "$id"
  echo "  and drills at ${PAIR_RATIO}x ($PAIR_SECS)"
  bytes=$(du -sb --apparent-size "$repo" | cut -f1) measure "$name verify --read-data" $bin --repo "$repo" -q verify --read-data
  echo "  repository: $(du -sb --apparent-size "$repo" | cut -f1) bytes"
  rm -rf "$WORK/restored" "$repo" "$top"
}
if [ "${ONLY:-}" = keyframes ]; then
  [ -n "${BEFORE:-}" ] && keyframes before "$BEFORE"
  keyframes tvault "$B"
  rm -rf "$WORK"
  exit 0
fi

echo "== physical limits"
measure "read (cat > /dev/null)" cat "$CKPT/model.safetensors"
measure "BLAKE3 alone, all cores" $B3 "$CKPT/model.safetensors"
measure "sequential write (dd conv=fsync)" dd if="$CKPT/model.safetensors" of="$WORK/dd.out" bs=8M conv=fsync
rm -f "$WORK/dd.out"

echo "== baselines"
measure "tar | zstd -3 -T0" bash -c "tar -C '$WORK/data/single' -cf - ckpt | zstd -3 -T0 -q -o '$WORK/single.tar.zst'"
echo "  stored: $(stat -c %s "$WORK/single.tar.zst") bytes = $(share "$(stat -c %s "$WORK/single.tar.zst")") of the input"
mkdir -p "$WORK/restored"
measure "zstd -d | tar -x" bash -c "zstd -d -q -c '$WORK/single.tar.zst' | tar -C '$WORK/restored' -xf -"
rm -rf "$WORK/single.tar.zst" "$WORK/restored"
if command -v restic >/dev/null; then
  export RESTIC_PASSWORD=bench
  restic init -q -r "$WORK/restic" >/dev/null
  measure "restic backup (first)" restic -q -r "$WORK/restic" backup "$CKPT"
  measure "restic backup (unchanged)" restic -q -r "$WORK/restic" backup "$CKPT"
  measure "restic restore" restic -q -r "$WORK/restic" restore latest --target "$WORK/restored"
  rm -rf "$WORK/restic" "$WORK/restored"
else
  echo "  restic: not installed, skipped"
fi
if command -v borg >/dev/null; then
  export BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
  borg init -e none "$WORK/borg" >/dev/null
  measure "borg create (first, zstd,3)" borg create -C zstd,3 "$WORK/borg::a" "$CKPT"
  measure "borg create (unchanged)" borg create -C zstd,3 "$WORK/borg::b" "$CKPT"
  mkdir -p "$WORK/restored"
  measure "borg extract" bash -c "cd '$WORK/restored' && borg extract '$WORK/borg::a'"
  rm -rf "$WORK/borg" "$WORK/restored"
else
  echo "  borg: not installed, skipped"
fi

for round in $(seq "$ROUNDS"); do
  [ -n "${BEFORE:-}" ] && run_tvault before "$BEFORE"
  run_tvault tvault "$B"
  if [ -n "${PLAIN:-}" ]; then run_tvault tvault-plain "$B" --no-encryption; fi
done
if [ "${ONLY:-}" = single ]; then
  rm -rf "$WORK"
  exit 0
fi

run_series

echo "== memory against file size (sparse zeros)"
for g in 1 20; do
  mkdir -p "$WORK/sparse$g"; truncate -s ${g}G "$WORK/sparse$g/big.bin"
  $B --repo "$WORK/sparse-repo$g" init -q
  bytes=$((g << 30)) measure "tvault backup (${g} GiB of zeros)" $B --repo "$WORK/sparse-repo$g" -q backup "$WORK/sparse$g"
  rm -rf "$WORK/sparse$g" "$WORK/sparse-repo$g"
done
rm -rf "$WORK"
