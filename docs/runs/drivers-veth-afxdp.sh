#!/usr/bin/env bash
# The AF_XDP comparison of docs/benchmarks.md: every driver over the same kind of veth, one
# after another in one session, N = 100 and 1,000 subscribers. Needs root and the release
# build (cargo build --release -p fanout-forwarder -p fanout-benches). Output in $OUT.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/drivers-veth-afxdp}
mkdir -p "$OUT"
bench=target/release/fanout-macro-bench
for cfg in "mio" "uring" "mio --xdp" "uring --xdp" "afxdp"; do
  set -- $cfg
  driver=$1
  shift
  tag=$driver${1:+-xdp}
  for n in 100 1000; do
    echo "=== driver=$driver $* n=$n $(date +%T)"
    "$bench" --network veth --driver "$driver" "$@" --subscribers "$n" \
      --json "$OUT/$tag-$n.json" 2>"$OUT/$tag-$n.err" | tail -4
  done
done
echo "=== done $(date +%T)"
