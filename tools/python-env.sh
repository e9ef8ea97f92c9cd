#!/usr/bin/env bash
# Creates (or reuses) a Python virtual environment for Kaa's tools and tests, from a pinned
# requirement list. Python is never part of the product: these environments hold test clients
# and benchmark baselines only, and are ignored by git.
#   tools/python-env.sh test    .venv-test  from tools/requirements-test.txt  (tritonclient[http], numpy, selenium)
#   tools/python-env.sh bench   .venv-bench from tools/requirements-bench.txt (FastAPI, uvicorn, onnxruntime)
# Idempotent: an environment whose stamp file holds the same requirement list is reused as it is;
# anything else (missing, half-installed, other pins) is rebuilt from scratch.
# Prints the environment's python path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-test}
case "$kind" in
  test|bench) ;;
  *) echo "python-env: unknown environment \`$kind\`; use \`test\` or \`bench\`" >&2; exit 2 ;;
esac
venv=".venv-$kind"
requirements="tools/requirements-$kind.txt"
stamp="$venv/.kaa-requirements"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; then
  echo "$PWD/$venv/bin/python"
  exit 0
fi

python=${KAA_PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
  echo "python-env: \`$python\` not found; install Python 3.11 or newer (Debian: python3 python3-venv), or set KAA_PYTHON" >&2
  exit 1
fi
echo "python-env: creating $venv from $requirements" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements" >&2
# The stamp is written last: an interrupted install leaves no stamp and is redone next time.
cp "$requirements" "$stamp"
echo "$PWD/$venv/bin/python"
