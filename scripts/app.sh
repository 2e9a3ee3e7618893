#!/usr/bin/env bash
# Run the dashboard on the offline demo: set up, build the demo model, its default Fisher and the rank
# explorer's snapshot once (about 6 minutes on 2 cores, reused afterwards), then serve the app on
# http://127.0.0.1:8501. Extra arguments go to `fwsvd app`: --port N, --address A, or any streamlit option
# (--server.port 8600, --theme.base dark); anything else is refused with one line before anything is built.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m fwsvd app --check "$@" >/dev/null  # refuse a mistyped option now, not after the demo build
python -m fwsvd demo
exec python -m fwsvd app "$@"
