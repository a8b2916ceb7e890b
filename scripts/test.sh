#!/usr/bin/env bash
# Installs everything the tests need into .venv, checks the import contracts and runs every
# test. Extra arguments go to pytest. For the quick local loop see scripts/quick.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# The web UI tests drive Debian's Chromium (a browser from Playwright's own download is not
# used); a fresh machine gets it here. Without it those tests fail rather than skip.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q chromium chromium-driver
    else
        echo "tests/web need Chromium: sudo apt-get install -y chromium chromium-driver" >&2
    fi
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pinned: an unpinned torch may pull a multi-GB CUDA build; 2.13.0 is the tested CPU build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e '.[test]'
# A broken layer contract fails the run, but the tests still run and report.
status=0
lint-imports || status=$?
python -m pytest "$@" || status=$?
exit "$status"
