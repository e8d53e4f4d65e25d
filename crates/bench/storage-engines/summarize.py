#!/usr/bin/env python3
"""Median summary of RESULT lines. Usage: python3 summarize.py ['glob']  (default results/*.log minus *_pass1*)"""
import collections, glob, os, re, statistics, sys

rows = []
pat = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("STOREBENCH_WORK", "/tmp/storebench-work") + "/results/*.log"
for f in sorted(glob.glob(pat)):
    if len(sys.argv) == 1 and "_pass1" in f:
        continue
    for line in open(f):
        if not line.startswith("RESULT"):
            continue
        toks = line.split()[1:]
        kind = " ".join(t for t in toks if "=" not in t and not t.startswith("/"))
        kv = dict(t.split("=", 1) for t in toks if "=" in t)
        rows.append((kind, kv))

def med(vals):
    vals = [float(v) for v in vals]
    return statistics.median(vals), vals

groups = collections.OrderedDict()
for kind, kv in rows:
    key = (kind, kv.get("engine"), kv.get("batch", ""))
    groups.setdefault(key, []).append(kv)

for (kind, eng, bs), kvs in groups.items():
    out = [f"{kind:22s} {eng or '':8s} {('batch=' + bs) if bs else '':11s} n={len(kvs)}"]
    fields = [k for k in kvs[0] if k not in ("engine", "batch", "run", "ctx", "crash", "capped", "sum")]
    for k in fields:
        try:
            m, vals = med([kv[k] for kv in kvs if k in kv])
            out.append(f"{k}={m:g}" + (f" [{', '.join(f'{v:g}' for v in vals)}]" if len(vals) > 1 else ""))
        except ValueError:
            out.append(f"{k}={kvs[0][k]}")
    print("  ".join(out))
