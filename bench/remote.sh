#!/usr/bin/env bash
# The remote cache's cost on the hot path (issue 9): a no-op `ttv build` of the 200-shot bench
# project with a remote cache configured (a shared folder, and an S3 server: moto on 127.0.0.1),
# side by side with the same project without one, in the same run. A no-op build must not touch
# the remote at all, so the ratios should be ~1.0. Also: a fresh clone's first build from the
# remote (every node downloaded) against that same project's cold build on the preview backend.
# Usage: bench/remote.sh [--quick]. Writes bench/results/remote.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
GEN="python3 $BENCH/gen.py"
SHOTS=200 RUNS=30
[[ ${1:-} == --quick ]] && RUNS=10
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
TTV=$ROOT/target/release/ttv
MOTO=${TTV_TEST_MOTO_SERVER:-$ROOT/target/moto-venv/bin/moto_server}
[[ -x $MOTO ]] || { echo "needs moto_server: run scripts/setup-debian.sh first" >&2; exit 2; }

W=$(mktemp -d)
MOTO_PID=
cleanup() { [[ -n $MOTO_PID ]] && kill "$MOTO_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MOTO" -H 127.0.0.1 -p "$PORT" >"$W/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 100); do curl -sf -X PUT "http://127.0.0.1:$PORT/bench" >/dev/null && break; sleep 0.1; done
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1

P=$W/p
$GEN project "$P" --shots "$SHOTS" --cut-every 10 --refs 10 --ref-mib 1 >/dev/null
S3=s3://bench/p FOLDER=file://$W/shared
# Machine A: the cold build that fills both remotes. Every measured command runs through `env`
# (the remote is set or turned off there), so that they pay the same exec.
start=$(date +%s.%N)
TTV_PREVIEW_LATENCY_MS=0 TTV_REMOTE_CACHE=$S3 "$TTV" -q -C "$P" build
cold=$(python3 -c "print(round($(date +%s.%N) - $start, 3))")
TTV_REMOTE_CACHE=$FOLDER "$TTV" -q -C "$P" cache push
sleep 1.1 # git's racy-timestamp rule: let the stat cache trust its rows
"$TTV" -q -C "$P" build
requests_before=$(grep -c '"' "$W/moto.log" || true)

hyperfine -N --style basic --warmup 3 --runs "$RUNS" --export-json "$W/noop.json" \
  -n none "env TTV_REMOTE_CACHE=off $TTV -q -C $P build" \
  -n folder "env TTV_REMOTE_CACHE=$FOLDER $TTV -q -C $P build" \
  -n s3 "env TTV_REMOTE_CACHE=$S3 $TTV -q -C $P build" >&2
# The same with the fast path off (`-v` turns it off): the full no-op walk, which looks every
# node up locally and must still ask the remote nothing.
hyperfine -N --style basic --warmup 3 --runs "$RUNS" --export-json "$W/full.json" \
  -n none "env TTV_REMOTE_CACHE=off $TTV -v -C $P build" \
  -n folder "env TTV_REMOTE_CACHE=$FOLDER $TTV -v -C $P build" \
  -n s3 "env TTV_REMOTE_CACHE=$S3 $TTV -v -C $P build" >&2
requests_after=$(grep -c '"' "$W/moto.log" || true)

# Machine B: a fresh copy of the project (no .ttv/, no build/) fetching all 401 nodes from S3.
B=$W/b
mkdir -p "$B" && cp -r "$P/ttv.yaml" "$P/references" "$B/"
start=$(date +%s.%N)
TTV_REMOTE_CACHE=$S3 "$TTV" --json -q -C "$B" build >"$W/b.json"
fetch=$(python3 -c "print(round($(date +%s.%N) - $start, 3))")
remote_nodes=$(python3 -c "import json; print(json.load(open('$W/b.json')).get('remote', 0))")

python3 - "$W/noop.json" "$W/full.json" "$cold" "$fetch" "$remote_nodes" "$((requests_after - requests_before))" >"$BENCH/results/remote.md" <<'PY'
import json, sys
fast = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
full = {r["command"]: r for r in json.load(open(sys.argv[2]))["results"]}
cold, fetch, remote_nodes, requests = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
print("# Remote cache: the no-op build with and without a remote (bench/remote.sh)\n")
print("200-shot bench project (401 nodes), preview backend, median of hyperfine runs, same run:\n")
print("| no-op build | remote | median | ratio to no remote |")
print("| --- | --- | --- | --- |")
for label, runs in (("fast path", fast), ("full walk (`-v`)", full)):
    ms = lambda n: runs[n]["median"] * 1000
    for n in ("none", "folder", "s3"):
        print(f"| {label} | {n} | {ms(n):.1f} ms | {ms(n) / ms('none'):.2f}x |")
print(f"\nRequests the S3 server logged during all the no-op runs: {requests} (a no-op touches no remote).\n")
print(f"A fresh clone's first build from the S3 remote: {fetch:.2f} s for {remote_nodes} nodes fetched, "
      f"against the cold build that made them: {cold:.2f} s ({fetch / cold:.2f}x; the preview "
      f"backend generates in milliseconds: with Gemini and Veo the cold build takes minutes and costs money).")
PY
cat "$BENCH/results/remote.md"
