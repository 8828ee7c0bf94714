"""onnxruntime called directly from Python on the rows engine_rows uses:
python3 worker/testdata/models/bench_onnxruntime.py [ROWS]"""
import csv
import os
import sys
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000


def features(name, label):
    with open(os.path.join(HERE, name)) as f:
        r = csv.reader(f)
        header = next(r)
        at = header.index(label)
        x = np.array([[float(v) for i, v in enumerate(row) if i != at] for row in r], dtype=np.float32)
    return np.resize(x, (rows, x.shape[1]))


digits = features("digits_test.csv", "label")
diabetes = features("diabetes_test.csv", "target")
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
print(f"{rows} rows, one thread, onnxruntime {ort.__version__} from Python")
for name, x in [("digits_mlp.onnx", digits), ("digits_logreg.onnx", digits), ("digits_forest.onnx", digits), ("diabetes_forest.onnx", diabetes)]:
    sess = ort.InferenceSession(os.path.join(HERE, name), opts, providers=["CPUExecutionProvider"])
    out = [sess.get_outputs()[0].name]
    start = time.perf_counter()
    for i in range(0, rows, 8192):
        sess.run(out, {sess.get_inputs()[0].name: x[i:i + 8192]})
    s = time.perf_counter() - start
    print(f"{name:<24} {'python-ort':<12} {rows / s:>12.0f} {s:>10.3}")
