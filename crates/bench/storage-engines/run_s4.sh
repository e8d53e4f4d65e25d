#!/usr/bin/env bash
# Scenario 4 (reopen time), controlled: every timed open starts from an identical on-disk
# snapshot (cp -a of the state produced by one fill), so the 3 runs are comparable.
# Usage: bash run_s4.sh N engine...     e.g. bash run_s4.sh 3000000 fjall redb redb-qr
#        env (fjall variants) FJ_JOURNAL_MB / FJ_MEMTABLE_MB / FJ_FLUSH_ON_CLOSE, TAG=label
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); cd "$HERE"; W=${STOREBENCH_WORK:-/tmp/storebench-work}; mkdir -p "$W/data" "$W/results"
B=$W/target/release/storebench
D=$W/data
R=$W/results
N=$1; shift
TAG=${TAG:-}
mkdir -p $D $R
log() { echo "$(date +%T) $*" >&2; }
# wait (max 5 min) while a foreign rustc is running, to reduce noise
quiet() { for _ in $(seq 1 60); do pgrep -x rustc >/dev/null || return 0; sleep 5; done; }

for e in "$@"; do
  for mode in ${MODES:-clean crash}; do
    rm -rf $D/s4-w $D/s4-snap
    quiet; log "s4 fill $e$TAG $N $mode"
    arg=""; [ $mode = crash ] && arg=crash
    $B fill $e $D/s4-w $N 16 0 4096 900 $arg | sed "s/^RESULT fill/RESULT s4fill$TAG $mode/" | tee -a $R/s4b.log
    sync
    cp -a $D/s4-w $D/s4-snap
    for i in 1 2 3; do
      rm -rf $D/s4-w; cp -a $D/s4-snap $D/s4-w; sync
      quiet
      $B open $e $D/s4-w | sed "s/^RESULT open/RESULT open$TAG $mode-warm N=$N/" | tee -a $R/s4b.log
    done
    for i in 1 2 3; do
      rm -rf $D/s4-w; cp -a $D/s4-snap $D/s4-w; sync
      echo 3 > /proc/sys/vm/drop_caches
      quiet
      $B open $e $D/s4-w | sed "s/^RESULT open/RESULT open$TAG $mode-cold N=$N/" | tee -a $R/s4b.log
    done
  done
  rm -rf $D/s4-w $D/s4-snap
done
log done
