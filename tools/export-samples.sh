#!/usr/bin/env bash
# Re-exports the sample models and their onnxruntime reference outputs (tools/export-samples.py)
# in a pinned virtual environment at .venv. Not run by CI: its outputs are committed.
# Usage: tools/export-samples.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q scikit-learn==1.9.1 skl2onnx==1.20.0 onnxruntime==1.32.0 numpy==2.4.6 onnx==1.23.2
.venv/bin/python tools/export-samples.py
