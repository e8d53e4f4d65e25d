#!/usr/bin/env bash
# Full benchmark run. Usage: bash run.sh [scenario...]   (default: all: build s1 s2 s3 s4)
# Results: results/<scenario>.log (lines starting with RESULT). Summarise with: python3 summarize.py
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); cd "$HERE"; W=${STOREBENCH_WORK:-/tmp/storebench-work}; mkdir -p "$W/data" "$W/results"
export CARGO_TARGET_DIR=$W/target
B=$W/target/release/storebench
D=$W/data
R=$W/results
mkdir -p "$D" "$R"
nice -n 10 cargo build --release -q

SCEN=${*:-"build s1 s2 s3 s4"}   # also: s4-10m

log() { echo "$(date +%T) $*" >&2; }
# wait (max 5 min) while a foreign rustc (another build on this machine) is running, to reduce noise
# QUIET_WAIT = number of 5 s waits (default 24 = 2 min; 0 = never wait)
quiet() { for _ in $(seq 1 ${QUIET_WAIT:-24}); do pgrep -x rustc >/dev/null || return 0; sleep 5; done; [ "${QUIET_WAIT:-24}" = 0 ] || log "still busy, running anyway"; }
# run the bench binary; tag RESULT lines with foreign rustc count at start and 1-min load average
runb() { local b0; b0=$(pgrep -xc rustc || true); "$B" "$@" | sed "s/^RESULT.*/& busy_rustc=${b0:-0} load1=$(cut -d' ' -f1 /proc/loadavg)/"; }

for s in $SCEN; do case $s in
build)
  # clean release build of each engine alone, from an empty target dir, 3 runs
  : > $R/build.log
  for e in fjall redb; do
    for i in 1 2 3; do
      T=$W/target/buildcost-$e
      rm -rf "$T"
      log "build $e run $i"
      quiet
      (cd buildcost/bc-$e && CARGO_TARGET_DIR=$T /usr/bin/time -f "RESULT build engine=$e run=$i secs=%e user_s=%U sys_s=%S" -o $W/results/.t nice -n 10 cargo build --release -q)
      cat $R/.t | tee -a $R/build.log
    done
    (cd buildcost/bc-$e && echo "RESULT tree engine=$e tree_lines=$(cargo tree | wc -l) unique_crates=$(cargo tree --prefix none -e normal,build | sed 's/ (\*)//' | sort -u | wc -l)") | tee -a $R/build.log
  done ;;
s1)
  : > $R/s1.log
  for i in 1 2 3; do for e in fjall fjall-p redb redb-qr; do
    quiet; log "s1 $e run $i"
    runb lat $e $D/s1-$e 5000 | tee -a $R/s1.log
    rm -rf $D/s1-$e
  done; done ;;
s2)
  : > $R/s2.log
  for i in 1 2 3; do for bs in 64 512 4096; do for e in fjall redb; do
    quiet; log "s2 $e batch $bs run $i"
    runb tput $e $D/s2-$e $bs 1000000 60 | tee -a $R/s2.log
    du -s --block-size=1 $D/s2-$e | sed "s/^/RESULT du engine=$e batch=$bs bytes=/" | tee -a $R/s2.log
    rm -rf $D/s2-$e
  done; done; done ;;
s3)
  : > $R/s3.log
  for e in fjall redb; do
    rm -rf $D/s3-$e
    quiet; log "s3 fill $e"
    $B fill $e $D/s3-$e 1000000 1 7 4096 600 | tee -a $R/s3.log
    for i in 1 2 3; do
      quiet; log "s3 scan $e run $i"
      runb scan $e $D/s3-$e 7 | tee -a $R/s3.log
    done
    rm -rf $D/s3-$e
  done ;;
s4)
  # controlled reopen benchmark (identical snapshot per timed open), 3M entries
  bash run_s4.sh 3000000 fjall redb
  MODES=crash bash run_s4.sh 3000000 redb-qr
  TAG=-j64m16 FJ_JOURNAL_MB=64 FJ_MEMTABLE_MB=16 bash run_s4.sh 3000000 fjall
  TAG=-flushclose FJ_FLUSH_ON_CLOSE=1 MODES=clean bash run_s4.sh 3000000 fjall ;;
s4-10m)
  # first (uncontrolled) pass: 10M attempt capped at 180 s, then repeated opens/crash cycles
  # on the SAME directory (state drifts between runs) -- kept for the 10M data points
  : > $R/s4.log
  # 4a: try 10M (cap 180 s of writing); report how far each engine got
  for e in fjall redb; do
    rm -rf $D/s4-$e
    log "s4 10M fill $e"
    $B fill $e $D/s4-$e 10000000 16 0 4096 180 | tee -a $R/s4.log
    for i in 1 2 3; do $B open $e $D/s4-$e | sed "s/^RESULT open/RESULT open10M clean/" | tee -a $R/s4.log; done
    for i in 1 2 3; do
      $B fill $e $D/s4-$e 65536 16 0 4096 600 crash | tee -a $R/s4.log
      $B open $e $D/s4-$e | sed "s/^RESULT open/RESULT open10M crash/" | tee -a $R/s4.log
    done
    rm -rf $D/s4-$e
  done
  # 4b: 3M for both engines (comparable)
  for e in fjall redb; do
    rm -rf $D/s4-$e
    log "s4 3M fill $e"
    $B fill $e $D/s4-$e 3000000 16 0 4096 600 | tee -a $R/s4.log
    for i in 1 2 3; do $B open $e $D/s4-$e | sed "s/^RESULT open/RESULT open3M clean/" | tee -a $R/s4.log; done
    engs=$e; [ $e = redb ] && engs="redb redb-qr"
    for x in $engs; do
      for i in 1 2 3; do
        $B fill $x $D/s4-$e 65536 16 0 4096 600 crash | tee -a $R/s4.log
        $B open $x $D/s4-$e | sed "s/^RESULT open/RESULT open3M crash-warm/" | tee -a $R/s4.log
      done
      for i in 1 2 3; do
        $B fill $x $D/s4-$e 65536 16 0 4096 600 crash | tee -a $R/s4.log
        sync; echo 3 > /proc/sys/vm/drop_caches || true
        $B open $x $D/s4-$e | sed "s/^RESULT open/RESULT open3M crash-cold/" | tee -a $R/s4.log
      done
    done
    rm -rf $D/s4-$e
  done ;;
esac; done
log done
