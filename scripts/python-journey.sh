#!/usr/bin/env bash
# The Python example (examples/python_journey.py) through the generated client, against the service.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-tools.sh
PYTHONPATH=clients/python scripts/with-service.sh "$PYTHON_TOOLS/bin/python" examples/python_journey.py
