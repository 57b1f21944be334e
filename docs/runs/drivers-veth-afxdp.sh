#!/usr/bin/env bash
# One session's AF_XDP comparison: every driver over the same kind of veth, one after another.
cd /work/main
B=target/release/fanout-macro-bench
for cfg in "mio" "uring" "mio --xdp" "uring --xdp" "afxdp"; do
  set -- $cfg
  d=$1; shift
  for n in 100 1000; do
    echo "=== driver=$d $* n=$n $(date +%T)"
    $B --network veth --driver $d "$@" --subscribers $n --json /tmp/bench/$d$([ -n "$*" ] && echo -xdp)-$n.json 2>/tmp/bench/$d$([ -n "$*" ] && echo -xdp)-$n.err | tail -4
  done
done
echo "=== done $(date +%T)"
