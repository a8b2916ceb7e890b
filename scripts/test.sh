#!/usr/bin/env bash
# Installs everything the tests need into .venv and runs them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pinned: an unpinned torch may pull a multi-GB CUDA build; 2.13.0 is the tested CPU build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e '.[test]'
python -m pytest "$@"
