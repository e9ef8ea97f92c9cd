#!/usr/bin/env python3
"""Triton's Python HTTP client (tritonclient[http], unchanged) against a running Kaa node.

Expects these snapshots on the node (Tests/KaaNodeTests/TritonClientTests.swift publishes them):
  iris    versions 1 and 2   (snapshots/iris-logreg)
  digits  version 1          (snapshots/digits-mlp)
  news    version 1          (snapshots/news-text, a BYTES text input)
Outputs are compared with onnxruntime's reference values in Tests/KaaEngineTests/Fixtures.

Usage: triton-client-check.py --url 127.0.0.1:PORT [--fixtures DIR]
Prints one line per check; exits 0 when every check passed, 1 otherwise.
"""
import argparse
from importlib import metadata
import json
import os
import sys
import traceback

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


class Failure(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise Failure(message)


def load_fixture(root, sample):
    with open(os.path.join(root, sample, "inputs.json")) as f:
        inputs = json.load(f)
    with open(os.path.join(root, sample, "outputs.json")) as f:
        outputs = json.load(f)

    def array(t):
        if t["dtype"] == "string":
            return np.array(t["data"], dtype=object).reshape(t["shape"])
        return np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"])

    return ({k: array(v) for k, v in inputs.items()}, {k: array(v) for k, v in outputs.items()})


def expect_close(name, got, want):
    """Float outputs within 1e-5 relative (+1e-6 absolute) of onnxruntime, others exactly."""
    expect(got is not None, f"output `{name}` is missing from the result")
    if want.dtype == object:
        got = np.array([g.decode() if isinstance(g, bytes) else g for g in got.reshape(-1)], dtype=object)
        want = want.reshape(-1)
        expect(got.shape == want.shape and all(got == want), f"`{name}`: {got[:5]}... != {want[:5]}...")
        return
    expect(got.shape == want.shape, f"`{name}` has shape {got.shape}, onnxruntime gives {want.shape}")
    expect(got.dtype == want.dtype, f"`{name}` has dtype {got.dtype}, onnxruntime gives {want.dtype}")
    if np.issubdtype(want.dtype, np.floating):
        bad = ~np.isclose(got, want, rtol=1e-5, atol=1e-6)
        expect(not bad.any(), f"`{name}` differs from onnxruntime at {np.argwhere(bad)[:3].tolist()}: "
                              f"{got[bad][:3]} vs {want[bad][:3]}")
    else:
        expect(np.array_equal(got, want), f"`{name}` differs from onnxruntime: {got.reshape(-1)[:8]} vs {want.reshape(-1)[:8]}")


def make_input(name, array, binary):
    datatype = "BYTES" if array.dtype == object else {np.float32: "FP32", np.int64: "INT64"}[array.dtype.type]
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


class Context:
    def __init__(self, url, fixtures):
        self.url = url
        self.client = httpclient.InferenceServerClient(url=url)
        self.iris = load_fixture(fixtures, "iris-logreg")
        self.digits = load_fixture(fixtures, "digits-mlp")
        self.news = load_fixture(fixtures, "news-text")


@check
def health(c):
    expect(c.client.is_server_live(), "is_server_live() is False")
    expect(c.client.is_server_ready(), "is_server_ready() is False")


@check
def server_metadata(c):
    meta = c.client.get_server_metadata()
    expect(meta.get("name") == "kaa", f"server name: {meta}")
    expect("version" in meta, f"no version: {meta}")
    expect("binary_tensor_data" in meta.get("extensions", []), f"extensions: {meta.get('extensions')}")


@check
def model_ready(c):
    expect(c.client.is_model_ready("iris"), "iris is not ready")
    expect(c.client.is_model_ready("iris", "1"), "iris version 1 is not ready")
    expect(not c.client.is_model_ready("no-such-model"), "an unknown model reads as ready")
    expect(not c.client.is_model_ready("iris", "9"), "a missing version reads as ready")


@check
def model_metadata(c):
    meta = c.client.get_model_metadata("iris")
    expect(meta["name"] == "iris", f"name: {meta}")
    expect(meta["versions"] == ["1", "2"], f"versions: {meta['versions']}")
    expect(meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}], f"inputs: {meta['inputs']}")
    names = [o["name"] for o in meta["outputs"]]
    expect(names == ["output_label", "output_probability"], f"outputs: {meta['outputs']}")
    v1 = c.client.get_model_metadata("iris", model_version="1")
    expect(v1["parameters"]["version"] == "1", f"version 1 metadata: {v1}")
    news = c.client.get_model_metadata("news")
    expect(news["inputs"][0]["datatype"] == "BYTES", f"news inputs: {news['inputs']}")


def infer_iris(c, input_binary, outputs, version=""):
    inputs, _ = c.iris
    return c.client.infer("iris", [make_input("input", inputs["input"], input_binary)],
                          model_version=version, outputs=outputs, request_id="triton-check")


@check
def infer_json_tensors(c):
    outputs = [httpclient.InferRequestedOutput("output_label", binary_data=False),
               httpclient.InferRequestedOutput("output_probability", binary_data=False)]
    result = infer_iris(c, False, outputs)
    response = result.get_response()
    expect(response["id"] == "triton-check", f"request id not echoed: {response.get('id')}")
    expect(response["model_name"] == "iris", f"model_name: {response['model_name']}")
    expect(all("data" in o for o in response["outputs"]), "JSON outputs were asked for")
    _, want = c.iris
    expect_close("output_label", result.as_numpy("output_label"), want["output_label"])
    expect_close("output_probability", result.as_numpy("output_probability"), want["output_probability"])


@check
def infer_binary_tensors(c):
    outputs = [httpclient.InferRequestedOutput("output_label", binary_data=True),
               httpclient.InferRequestedOutput("output_probability", binary_data=True)]
    result = infer_iris(c, True, outputs)
    expect(all("binary_data_size" in o.get("parameters", {}) for o in result.get_response()["outputs"]),
           "binary outputs were asked for")
    _, want = c.iris
    expect_close("output_label", result.as_numpy("output_label"), want["output_label"])
    expect_close("output_probability", result.as_numpy("output_probability"), want["output_probability"])


@check
def json_and_binary_agree_exactly(c):
    """The JSON numbers Kaa writes parse back to the very floats it sends in binary."""
    both = lambda binary: [httpclient.InferRequestedOutput("output_probability", binary_data=binary)]
    json_result = infer_iris(c, False, both(False)).as_numpy("output_probability")
    binary_result = infer_iris(c, True, both(True)).as_numpy("output_probability")
    expect(np.array_equal(json_result, binary_result), "JSON and binary outputs differ")


@check
def infer_default_outputs_binary(c):
    """No outputs named: the client asks for every output in binary (binary_data_output)."""
    inputs, want = c.digits
    result = c.client.infer("digits", [make_input("input", inputs["input"], True)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    expect(names == ["output_label", "output_probability"], f"outputs: {names}")
    expect_close("output_label", result.as_numpy("output_label"), want["output_label"])
    expect_close("output_probability", result.as_numpy("output_probability"), want["output_probability"])


@check
def infer_mixed_output_encodings(c):
    outputs = [httpclient.InferRequestedOutput("output_probability", binary_data=True),
               httpclient.InferRequestedOutput("output_label", binary_data=False)]
    result = infer_iris(c, True, outputs)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    expect("data" in by_name["output_label"] and "binary_data_size" in by_name["output_probability"]["parameters"],
           f"encodings: {by_name}")
    _, want = c.iris
    expect_close("output_label", result.as_numpy("output_label"), want["output_label"])
    expect_close("output_probability", result.as_numpy("output_probability"), want["output_probability"])


@check
def infer_output_subset(c):
    result = infer_iris(c, False, [httpclient.InferRequestedOutput("output_probability", binary_data=False)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    expect(names == ["output_probability"], f"asked for output_probability only, got {names}")
    expect(result.as_numpy("output_label") is None, "output_label came back without being asked for")
    expect_close("output_probability", result.as_numpy("output_probability"), c.iris[1]["output_probability"])


@check
def infer_versioned(c):
    for version in ("1", "2"):
        result = infer_iris(c, True, [httpclient.InferRequestedOutput("output_label")], version=version)
        expect(result.get_response()["model_version"] == version, f"asked for version {version}: {result.get_response()}")
        expect_close("output_label", result.as_numpy("output_label"), c.iris[1]["output_label"])
    latest = infer_iris(c, True, [httpclient.InferRequestedOutput("output_label")])
    expect(latest.get_response()["model_version"] == "2", "no version: the latest (2) should answer")


@check
def infer_bytes_text(c):
    inputs, want = c.news
    for binary in (False, True):
        outputs = [httpclient.InferRequestedOutput("output_label", binary_data=binary),
                   httpclient.InferRequestedOutput("output_probability", binary_data=binary)]
        result = c.client.infer("news", [make_input("input", inputs["input"], binary)], outputs=outputs)
        label = result.as_numpy("output_label")
        expect(label.dtype == object, f"BYTES output came back as {label.dtype}")
        expect_close("output_label", label, want["output_label"])
        expect_close("output_probability", result.as_numpy("output_probability"), want["output_probability"])


@check
def unknown_model_error(c):
    try:
        c.client.infer("no-such-model", [make_input("input", c.iris[0]["input"], False)])
    except InferenceServerException as e:
        expect(e.status() == "404", f"status {e.status()}: {e.message()}")
        expect("model `no-such-model` does not exist" in e.message(), f"message: {e.message()}")
        return
    raise Failure("no InferenceServerException for an unknown model")


@check
def bad_input_error(c):
    wrong = np.zeros((2, 3), dtype=np.float32)
    try:
        c.client.infer("iris", [make_input("input", wrong, True)])
    except InferenceServerException as e:
        expect(e.status() == "400", f"status {e.status()}: {e.message()}")
        expect("dimension 1 must be 4" in e.message(), f"message: {e.message()}")
        return
    raise Failure("no InferenceServerException for a [2, 3] input to a [-1, 4] model")


@check
def compressed_request_refused(c):
    try:
        c.client.infer("iris", [make_input("input", c.iris[0]["input"], False)], request_compression_algorithm="gzip")
    except InferenceServerException as e:
        expect(e.status() == "415", f"status {e.status()}: {e.message()}")
        expect("Content-Encoding `gzip` is not supported" in e.message(), f"message: {e.message()}")
        return
    raise Failure("a gzip-compressed request was accepted; Kaa does not decompress request bodies")


@check
def concurrent_async_infer(c):
    """Several pooled keep-alive connections at once (gevent greenlets), each answer its own."""
    inputs, want = c.digits
    client = httpclient.InferenceServerClient(url=c.url, concurrency=4)
    try:
        pending = []
        for i in range(16):
            rows = inputs["input"][i * 8:(i + 1) * 8]
            pending.append((i, client.async_infer("digits", [make_input("input", rows, i % 2 == 0)], request_id=str(i))))
        for i, request in pending:
            result = request.get_result()
            expect(result.get_response()["id"] == str(i), f"request {i} got the answer to {result.get_response()['id']}")
            expect_close("output_label", result.as_numpy("output_label"), want["output_label"][i * 8:(i + 1) * 8])
    finally:
        client.close()


@check
def repository_extension(c):
    index = c.client.get_model_repository_index()
    names = sorted({(m["name"], m["version"]) for m in index})
    expect(names == [("digits", "1"), ("iris", "1"), ("iris", "2"), ("news", "1")], f"index: {index}")
    c.client.unload_model("digits")
    expect(not c.client.is_model_ready("digits"), "digits is ready after unload_model")
    c.client.load_model("digits")
    expect(c.client.is_model_ready("digits"), "digits is not ready after load_model")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the node's HTTP address, HOST:PORT")
    parser.add_argument("--fixtures", default=os.path.join(here, "..", "Tests", "KaaEngineTests", "Fixtures"))
    args = parser.parse_args()
    context = Context(args.url, args.fixtures)
    failed = 0
    for fn in CHECKS:
        try:
            fn(context)
            print(f"ok    {fn.__name__}")
        except Failure as e:
            failed += 1
            print(f"FAIL  {fn.__name__}: {e}")
        except Exception:
            failed += 1
            print(f"FAIL  {fn.__name__}: unexpected exception\n{traceback.format_exc()}")
    context.client.close()
    print(f"tritonclient {metadata.version('tritonclient')}: {len(CHECKS) - failed} of {len(CHECKS)} checks ok")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
