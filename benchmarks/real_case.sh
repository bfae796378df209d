#!/bin/bash
# Issue 18's real case for the A/B gate: the current side is c6708f8's kernels (their Mixtral H200 permute config,
# which the nearest-batch lookup of that day handed to M = 256 and 512), the reference is a commit on top of it that
# only deletes that config. Both carry this checkout's plugin (c6708f8's has no --moeperf-against). Run on a GPU:
#     bash benchmarks/real_case.sh [WORKTREE] [pytest args...]      (default: -k "timing and permute")
# It adds a detached worktree, installs it editable into $PYTHON (default python3) (put it back with
# `pip install -e .` here afterwards), and runs the Mixtral timing tests against the reference.
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
W=${1:-/tmp/moeperf-real-case}
shift || true
[ $# -gt 0 ] || set -- -k "timing and permute"
PY=${PYTHON:-python3}
# made absolute, since the script changes folder (not realpath: a venv's python is a link out of it)
case $PY in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
CONFIG="kernels/configs/permute,E=8,H=4096,k=2,dtype=bfloat16,device_name=NVIDIA_H200.json"
G="git -c user.name=moeperf -c user.email=moeperf@localhost"
git -C "$ROOT" worktree add -f --detach "$W" HEAD >/dev/null
cd "$W"
git checkout -q c6708f8 -- kernels
$G commit -qm "real case: the kernels of c6708f8"
CURRENT=$(git rev-parse HEAD)
git rm -q "$CONFIG"
$G commit -qm "real case: only the Mixtral H200 permute config deleted"
REF=$(git rev-parse HEAD)
git checkout -q --detach "$CURRENT"
$PY -m pip install -q --no-deps --no-build-isolation -e .
echo "current $CURRENT (c6708f8's kernels), reference $REF (its config deleted)"
$PY -m pytest --moeperf scenarios/mixtral.yaml --moeperf-against "$REF" -p no:cacheprovider -rf "$@"
