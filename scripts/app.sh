#!/usr/bin/env bash
# Run the dashboard on the offline demo: set up, build the demo model once (about 6 minutes on 2 cores,
# reused afterwards), then serve the app on http://127.0.0.1:8501. Extra arguments go to `fwsvd app`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m fwsvd demo
exec python -m fwsvd app "$@"
