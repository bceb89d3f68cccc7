#!/bin/bash
cd /work/main
export PATH=$PATH:/tmp/tok/vr/bin
for run in off3 on3 on4 off4; do
  extra=""
  case $run in off*) extra="--hfx-arg=--policy-config=/tmp/slip0.yaml";; esac
  echo "== $run $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  .venv/bin/python -m benchmarks.peer.compare --targets hfx $extra --unloaded-from benchmarks/peer/probe-seventh-peer.json --rate --multi-slo 12 16 20 --multi-slo-requests 300 --json /tmp/ab/$run.json 2>&1 | grep -A8 -i "multi-class\|attainment" | tail -12
done
echo "== end $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
