#!/usr/bin/env bash
# The quick local loop: the import contracts, then the tests on SQLite that need no browser
# and are not marked slow (a few minutes on two cores). Uses the .venv that ./scripts/test.sh
# sets up; extra arguments go to pytest. CI runs everything (./scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/lint-imports ]; then
    echo "no test environment yet: run ./scripts/test.sh once" >&2
    exit 2
fi
status=0
.venv/bin/lint-imports || status=$?
.venv/bin/python -m pytest -m "not postgres and not browser and not slow" "$@" || status=$?
exit "$status"
