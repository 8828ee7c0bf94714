"""Builds the scikit-learn models and datasets under worker/testdata/models.

The ONNX files here were made by this script (scikit-learn, skl2onnx and
onnx from PyPI) and are committed, so the tests need no Python; run it again
to remake them: `python3 worker/testdata/models/make_models.py`.

- digits_{logreg,mlp,forest}.onnx: classifiers on scikit-learn's digits,
  exported with skl2onnx's defaults (a ZipMap on the probabilities);
- diabetes_{linear,mlp,forest}.onnx: regressors on the diabetes data (the
  forest is a TreeEnsembleRegressor);
- int_input.onnx: a model whose input is int32 (as Magika's is);
- digits_test.csv / .jsonl, diabetes_test.csv: the held-out rows;
- expected.json: scikit-learn's own metrics on those rows, and onnxruntime's
  outputs for the first rows, for the tests to compare against.
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_diabetes, load_digits
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor

HERE = os.path.dirname(os.path.abspath(__file__))


def save(model, x, name):
    onx = to_onnx(model, x[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(onx.SerializeToString())


def ort_outputs(name, x):
    sess = ort.InferenceSession(os.path.join(HERE, name), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})
    res = {}
    for meta, out in zip(sess.get_outputs(), outs):
        if isinstance(out, list):  # ZipMap: a list of {class: probability}
            keys = sorted(out[0].keys())
            out = np.array([[row[k] for k in keys] for row in out], dtype=np.float32)
        res[meta.name] = np.asarray(out).astype(float).tolist()
    return res


def write_csv(path, names, x, y, label):
    with open(path, "w") as f:
        f.write(",".join(names + [label]) + "\n")
        for row, t in zip(x, y):
            f.write(",".join(repr(float(v)) if not float(v).is_integer() else str(int(v)) for v in row))
            f.write("," + (str(int(t)) if float(t).is_integer() else repr(float(t))) + "\n")


def main():
    expected = {}
    digits = load_digits()
    xtr, xte, ytr, yte = train_test_split(digits.data, digits.target, test_size=360, random_state=0)
    names = [f"px{i}" for i in range(64)]
    write_csv(os.path.join(HERE, "digits_test.csv"), names, xte, yte, "label")
    with open(os.path.join(HERE, "digits_test.jsonl"), "w") as f:
        for row, t in zip(xte, yte):
            obj = {n: int(v) for n, v in zip(names, row)}
            obj["label"] = int(t)
            f.write(json.dumps(obj) + "\n")
    for name, model in [
        ("digits_logreg.onnx", LogisticRegression(max_iter=2000)),
        ("digits_mlp.onnx", MLPClassifier(hidden_layer_sizes=(32,), max_iter=500, random_state=0)),
        ("digits_forest.onnx", RandomForestClassifier(n_estimators=10, max_depth=8, random_state=0)),
    ]:
        model.fit(xtr, ytr)
        save(model, xtr, name)
        pred = model.predict(xte)
        expected[name] = {
            "sklearn": {"accuracy": accuracy_score(yte, pred), "macro_f1": f1_score(yte, pred, average="macro")},
            "onnxruntime": ort_outputs(name, xte[:5]),
        }

    diabetes = load_diabetes()
    xtr, xte, ytr, yte = train_test_split(diabetes.data, diabetes.target, test_size=100, random_state=0)
    write_csv(os.path.join(HERE, "diabetes_test.csv"), list(diabetes.feature_names), xte, yte, "target")
    for name, model in [
        ("diabetes_linear.onnx", LinearRegression()),
        ("diabetes_mlp.onnx", MLPRegressor(hidden_layer_sizes=(16,), max_iter=2000, random_state=0)),
        ("diabetes_forest.onnx", RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0)),
    ]:
        model.fit(xtr, ytr)
        save(model, xtr, name)
        pred = model.predict(xte)
        expected[name] = {
            "sklearn": {"mse": mean_squared_error(yte, pred), "mae": mean_absolute_error(yte, pred)},
            "onnxruntime": ort_outputs(name, xte[:5]),
        }

    # An int32 input (as Magika's): y = float(x) . [1, 2, 3, 4]
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["xf", "w"], ["y"]),
        ],
        "int_input",
        [helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 1], [1.0, 2.0, 3.0, 4.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="coop-tests")
    model.ir_version = 8
    onnx.save(model, os.path.join(HERE, "int_input.onnx"))

    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
