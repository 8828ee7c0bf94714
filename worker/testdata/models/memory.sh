#!/usr/bin/env bash
# Peak resident memory of a model job's child process on ROWS rows (default
# 1,000,000): the digits MLP over a .npy input (inference), and the same
# model scored on a CSV dataset, whole and as one shard of 4.
#   cargo build --release --bin coop && worker/testdata/models/memory.sh [ROWS]
# Uses python3 with numpy to write the inputs, and GNU time for the peak.
set -euo pipefail
rows=${1:-1000000}
here=$(cd "$(dirname "$0")" && pwd)
coop=${COOP_BIN:-$here/../../../target/release/coop}
# The child finds ONNX Runtime where the worker tells it: the wheel's library.
if [ -z "${COOP_ONNXRUNTIME_LIB:-}" ]; then
  COOP_ONNXRUNTIME_LIB=$(python3 -c 'import glob, os, onnxruntime as o; print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so*")))[0])' 2>/dev/null || true)
  export COOP_ONNXRUNTIME_LIB
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$here/digits_test.csv" "$work" "$rows" <<'PY'
import sys, numpy as np
src, work, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = np.loadtxt(src, delimiter=",", skiprows=1, dtype=np.float32)
reps = -(-rows // len(d))
d = np.tile(d, (reps, 1))[:rows]
np.save(f"{work}/in.npy", np.ascontiguousarray(d[:, :-1]))
header = ",".join([f"px{i}" for i in range(64)] + ["label"])
np.savetxt(f"{work}/data.csv", d, delimiter=",", fmt="%g", header=header, comments="")
PY
job() { # name, json
  mkdir -p "$work/$1"
  printf '%s' "$2" > "$work/$1/model-job.json"
}
model="$here/digits_mlp.onnx"
job infer "{\"kind\":\"inference\",\"model\":{\"uri\":\"$model\"},\"input\":{\"uri\":\"$work/in.npy\"},\"output\":\"out.npy\"}"
eval_json() {
  echo "{\"kind\":\"evaluation\",\"models\":[{\"uri\":\"$model\"}],\"dataset\":{\"uri\":\"$work/data.csv\"},\"label_column\":\"label\",\"task\":\"classification\",\"metrics\":[],\"options\":{$1}}"
}
job eval "$(eval_json '')"
job shard "$(eval_json '"shards":4')"
printf 'input: %s MiB .npy, %s MiB CSV, %s rows\n' \
  $(( $(stat -c %s "$work/in.npy") >> 20 )) $(( $(stat -c %s "$work/data.csv") >> 20 )) "$rows"
for engine in tract onnxruntime; do
  for j in infer eval shard; do
    python3 - "$work/$j/model-job.json" "$engine" <<'PY'
import json, sys
p, engine = sys.argv[1], sys.argv[2]
j = json.load(open(p))
j.setdefault("options", {})["engine"] = engine
json.dump(j, open(p, "w"))
PY
    rm -f "$work/$j/result.json" "$work/$j/error.txt"
    if COOP_ARRAY_INDEX=0 /usr/bin/time -f "%M %e" -o "$work/time" \
      "$coop" run-model "$work/$j" "$work/cache" > /dev/null 2> "$work/$j/stderr"; then
      read -r kib secs < "$work/time"
      printf '%-12s %-6s peak RSS %5d MiB, %6.2f s\n' "$engine" "$j" $((kib >> 10)) "$secs"
    else
      printf '%-12s %-6s failed: %s\n' "$engine" "$j" "$(cat "$work/$j/error.txt" 2>/dev/null || tail -1 "$work/$j/stderr")"
    fi
  done
done
