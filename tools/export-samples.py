"""Exports Kaa's sample models with scikit-learn + skl2onnx and onnxruntime reference outputs.

Writes snapshots/<name>/model.onnx and Tests/KaaEngineTests/Fixtures/<name>/{inputs,outputs}.json.
Run through tools/export-samples.sh, which creates the pinned virtual environment.
Every data set comes with scikit-learn (no download); the text corpus is built in below.
The pipelines (snapshots/<name>/pipeline.yaml, docs/pipeline.md) are written by hand; this
script does not touch them.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.datasets import load_diabetes, load_digits, load_iris, load_wine
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPSETS = {"": 17, "ai.onnx.ml": 3}


def tensor_json(value):
    """A reference value: a tensor, or ZipMap's list of dicts as a matrix with its keys."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = list(value[0].keys())
        data = [float(row[k]) for row in value for k in keys]
        kind = "string" if isinstance(keys[0], str) else "int64"
        return {"dtype": "float32", "shape": [len(value), len(keys)], "data": data,
                "map_keys": keys, "map_key_dtype": kind}
    arr = np.asarray(value)
    if arr.dtype.kind in "US" or arr.dtype == object:
        return {"dtype": "string", "shape": list(arr.shape), "data": [str(v) for v in arr.reshape(-1)]}
    dtype = {"float32": "float32", "float64": "float64", "int64": "int64", "int32": "int32", "bool": "bool"}[str(arr.dtype)]
    # JSON has no NaN or infinity: NaN is written as null, infinities as "inf" / "-inf".
    def enc(v):
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, float) and v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return v
    data = [enc(v) for v in arr.reshape(-1).tolist()]
    return {"dtype": dtype, "shape": list(arr.shape), "data": data}


def export(name, model, X, initial_types, rows, options=None):
    onx = to_onnx(model, initial_types=initial_types, target_opset=OPSETS, options=options)
    path = os.path.join(ROOT, "snapshots", name)
    os.makedirs(path, exist_ok=True)
    data = onx.SerializeToString()
    with open(os.path.join(path, "model.onnx"), "wb") as f:
        f.write(data)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    feed = {initial_types[0][0]: X[:rows]}
    outs = sess.run(None, feed)
    names = [o.name for o in sess.get_outputs()]
    fx = os.path.join(ROOT, "Tests", "KaaEngineTests", "Fixtures", name)
    os.makedirs(fx, exist_ok=True)
    with open(os.path.join(fx, "inputs.json"), "w") as f:
        json.dump({k: tensor_json(v) for k, v in feed.items()}, f, separators=(",", ":"))
    with open(os.path.join(fx, "outputs.json"), "w") as f:
        json.dump({n: tensor_json(v) for n, v in zip(names, outs)}, f, separators=(",", ":"))
    print(f"{name}: {len(data)} bytes, {rows} reference rows, outputs {names}")


TEXTS = {
    "sports": [
        "the team won the match in the final minute", "a late goal gave the home side the victory",
        "the striker scored twice and the keeper saved a penalty", "fans cheered as the league title was decided",
        "the coach praised the defence after the cup game", "injury keeps the captain out of the next fixture",
        "the runner broke the record at the national championship", "tennis star wins the open after five sets",
        "the cyclist took the yellow jersey on the mountain stage", "basketball playoffs start with an overtime thriller",
    ],
    "tech": [
        "the new phone has a faster chip and a better camera", "developers released a patch for the security bug",
        "the cloud service suffered an outage for three hours", "a startup launched an open source database engine",
        "the compiler update improves build times for large projects", "researchers trained a language model on code",
        "the laptop battery lasts twelve hours in tests", "a vulnerability in the router firmware was disclosed",
        "the operating system adds new privacy controls", "engineers moved the service to a faster network stack",
    ],
    "food": [
        "slow roasted tomatoes with garlic make a rich sauce", "the bakery sells sourdough bread every morning",
        "add the rice and stir until the stock is absorbed", "a spicy curry with lentils and fresh coriander",
        "the chef serves grilled fish with lemon butter", "whisk the eggs and sugar until pale and fluffy",
        "the market has ripe peaches and sweet cherries", "simmer the beans for an hour with onion and bay leaf",
        "fresh pasta needs flour eggs and a little salt", "the soup tastes better the next day",
    ],
}


def main():
    rows_limit = 300
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    m = LogisticRegression(max_iter=1000).fit(X, y)
    export("iris-logreg", m, X, [("input", FloatTensorType([None, 4]))], len(X))

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    m = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0)).fit(X, y)
    export("digits-mlp", m, X, [("input", FloatTensorType([None, 64]))], rows_limit)

    X, y = load_diabetes(return_X_y=True)
    X = X.astype(np.float32)
    m = GradientBoostingRegressor(n_estimators=100, random_state=0).fit(X, y)
    export("diabetes-gbr", m, X, [("input", FloatTensorType([None, 10]))], rows_limit)

    X, y = load_wine(return_X_y=True)
    X = X.astype(np.float32)
    m = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0).fit(X, y)
    export("wine-forest", m, X, [("input", FloatTensorType([None, 13]))], len(X))

    docs, labels = [], []
    for label, texts in TEXTS.items():
        docs += texts
        labels += [label] * len(texts)
    m = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)).fit(docs, labels)
    Xt = np.array(docs + ["the team tested a new phone", "bread and cheese after the match"]).reshape(-1, 1)
    # locale C: onnxruntime's StringNormalizer cannot build en_US.UTF-8 where that locale
    # is not installed.
    export("news-text", m, Xt, [("input", StringTensorType([None, 1]))], len(Xt),
           options={TfidfVectorizer: {"locale": "C"}})
    tree_variants()


def tree_variants():
    """Hand-built TreeEnsembleRegressor/Classifier models covering every aggregate function,
    post transform, branch mode and missing-value track, with onnxruntime's outputs on rows
    that include NaNs and values exactly at the thresholds."""
    from onnx import TensorProto, helper

    # Two trees over 3 features; every branch mode; node 0 of tree 1 sends NaN to true.
    modes = ["BRANCH_LEQ", "BRANCH_LT", "LEAF", "LEAF", "BRANCH_GTE", "LEAF", "LEAF",
             "BRANCH_GT", "BRANCH_EQ", "LEAF", "LEAF", "BRANCH_NEQ", "LEAF", "LEAF"]
    tree = dict(
        nodes_treeids=[0] * 7 + [1] * 7,
        nodes_nodeids=list(range(7)) * 2,
        nodes_featureids=[0, 1, 0, 0, 2, 0, 0, 1, 2, 0, 0, 0, 0, 0],
        nodes_modes=modes,
        nodes_values=[0.5, 0.25, 0, 0, 0.75, 0, 0, 0.5, 1.0, 0, 0, 0.0, 0, 0],
        nodes_truenodeids=[1, 2, 0, 0, 5, 0, 0, 1, 2, 0, 0, 5, 0, 0],
        nodes_falsenodeids=[4, 3, 0, 0, 6, 0, 0, 4, 3, 0, 0, 6, 0, 0],
        nodes_missing_value_tracks_true=[0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0],
    )
    leaves = [(0, 2), (0, 3), (0, 5), (0, 6), (1, 2), (1, 3), (1, 5), (1, 6)]
    rng = np.random.default_rng(7)
    X = rng.uniform(-0.5, 1.5, size=(200, 3)).astype(np.float32)
    X[::7, 0] = np.nan
    X[::5, 1] = np.nan
    X[::11, 2] = np.nan
    X[3::13, 0] = 0.5
    X[4::13, 2] = 1.0
    X[6::17, 1] = 0.5
    out_root = os.path.join(ROOT, "Tests", "KaaEngineTests", "Fixtures", "trees")
    os.makedirs(out_root, exist_ok=True)

    def save(name, node, n_out, out_specs):
        graph = helper.make_graph(
            [node], name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
            [helper.make_tensor_value_info(n, t, s) for n, t, s in out_specs])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
        model.ir_version = 8
        data = model.SerializeToString()
        try:
            sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            outs = sess.run(None, {"X": X})
        except Exception as e:  # a combination onnxruntime refuses is not a reference
            print(f"trees/{name}: onnxruntime refuses it ({str(e)[:80]}); skipped")
            return
        d = os.path.join(out_root, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(data)
        with open(os.path.join(d, "inputs.json"), "w") as f:
            json.dump({"X": tensor_json(X)}, f, separators=(",", ":"))
        with open(os.path.join(d, "outputs.json"), "w") as f:
            json.dump({o.name: tensor_json(v) for o, v in zip(sess.get_outputs(), outs)}, f, separators=(",", ":"))
        print(f"trees/{name}: ok")

    for agg in ["SUM", "AVERAGE", "MIN", "MAX"]:
        for post in ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"]:
            ids, nodes, targets, weights = [], [], [], []
            for k, (t, n) in enumerate(leaves):
                for target in range(2):
                    ids.append(t); nodes.append(n); targets.append(target)
                    weights.append(float((k + 1) * (1 if target == 0 else -0.5)) if k != 3 else 0.0)
            node = helper.make_node(
                "TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=2,
                aggregate_function=agg, post_transform=post, base_values=[0.25, -0.125],
                target_treeids=ids, target_nodeids=nodes, target_ids=targets, target_weights=weights, **tree)
            save(f"regressor-{agg.lower()}-{post.lower()}", node, 1, [("Y", TensorProto.FLOAT, [None, 2])])

    for post in ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"]:
        ids, nodes, classes, weights = [], [], [], []
        for k, (t, n) in enumerate(leaves):
            for c in range(3):
                ids.append(t); nodes.append(n); classes.append(c)
                weights.append(float(((k * 3 + c) % 5) / 10.0))
        node = helper.make_node(
            "TreeEnsembleClassifier", ["X"], ["label", "scores"], domain="ai.onnx.ml",
            classlabels_int64s=[10, 20, 30], post_transform=post, base_values=[0.1, 0.0, -0.1],
            class_treeids=ids, class_nodeids=nodes, class_ids=classes, class_weights=weights, **tree)
        save(f"classifier3-{post.lower()}", node, 2, [("label", TensorProto.INT64, [None]), ("scores", TensorProto.FLOAT, [None, 3])])

    for positive, post, cid in [(p, t, c) for p in [True, False] for t in ["NONE", "LOGISTIC"] for c in [0, 1]]:
        if True:
            ids = [t for t, _ in leaves]
            nodes = [n for _, n in leaves]
            weights = [float((k % 4) / 4.0) if positive else float((k % 4) / 4.0 - 0.4) for k in range(len(leaves))]
            node = helper.make_node(
                "TreeEnsembleClassifier", ["X"], ["label", "scores"], domain="ai.onnx.ml",
                classlabels_strings=["no", "yes"], post_transform=post,
                class_treeids=ids, class_nodeids=nodes, class_ids=[cid] * len(leaves), class_weights=weights, **tree)
            save(f"binary{cid}-{'positive' if positive else 'mixed'}-{post.lower()}", node, 2,
                 [("label", TensorProto.STRING, [None]), ("scores", TensorProto.FLOAT, [None, 2])])


if __name__ == "__main__":
    sys.exit(main())
