#!/usr/bin/env python3
"""The baseline of tools/bench-serving.sh: one ONNX model behind FastAPI + uvicorn + onnxruntime.

Serves `POST /v2/models/{name}/infer` with the same Open Inference Protocol JSON body Kaa takes
(`{"inputs":[{"name","shape","datatype","data"}]}`) and answers an OIP-shaped JSON response with
every output. onnxruntime runs with intra_op_num_threads=1 and inter_op_num_threads=1; uvicorn
runs one worker on uvloop + httptools (uvicorn[standard], its fast path).

The endpoint is deliberately lean, so the comparison flatters the baseline rather than Kaa: the
body is read raw and parsed with the standard json module (no pydantic model), the session runs
directly in the async handler (no thread-pool hop), and the answer is written as bytes. It still
checks what Kaa checks: the input's name, datatype and element count.

Usage: bench-serving-fastapi.py --model model.onnx --port PORT [--host 127.0.0.1]
"""
import argparse
import json
import math

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

OIP_DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "bool": "BOOL"}


def make_app(model_path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    output_names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    def error(status, message):
        return Response(json.dumps({"error": message}).encode(), status_code=status, media_type="application/json")

    @app.get("/v2/health/live")
    async def live():
        return Response(b"", status_code=200)

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        try:
            body = json.loads(await request.body())
            feed = {}
            for tensor in body["inputs"]:
                if tensor["name"] not in inputs:
                    return error(400, f"input `{tensor['name']}` does not exist")
                if tensor["datatype"] != "FP32":
                    return error(400, f"input `{tensor['name']}` has datatype {tensor['datatype']}, the model expects FP32")
                shape = tensor["shape"]
                data = np.asarray(tensor["data"], dtype=np.float32)
                if data.size != math.prod(shape):
                    return error(400, f"input `{tensor['name']}` has {data.size} values; shape {shape} needs {math.prod(shape)}")
                feed[tensor["name"]] = data.reshape(shape)
        except (ValueError, KeyError, TypeError) as e:
            return error(400, f"bad request: {e}")
        results = session.run(output_names, feed)
        outputs = []
        for output_name, value in zip(output_names, results):
            if isinstance(value, list) and value and isinstance(value[0], dict):
                # A sequence of maps (ZipMap) as Kaa serves it: a [batch, keys] FP32 tensor and its keys.
                keys = list(value[0].keys())
                outputs.append({"name": output_name, "datatype": "FP32", "shape": [len(value), len(keys)],
                                "parameters": {"map_keys": keys}, "data": [row[k] for row in value for k in keys]})
                continue
            value = np.asarray(value)
            outputs.append({"name": output_name, "datatype": OIP_DATATYPES[value.dtype.name],
                            "shape": list(value.shape), "data": value.reshape(-1).tolist()})
        answer = {"model_name": name, "model_version": "1", "outputs": outputs}
        return Response(json.dumps(answer).encode(), media_type="application/json")

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(make_app(args.model), host=args.host, port=args.port, workers=1, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
