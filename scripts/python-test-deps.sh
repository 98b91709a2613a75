#!/usr/bin/env bash
# Python packages the tests use: the Standard Webhooks reference library, which verifies
# rotated deliveries in crates/events/tests/webhook_secrets.rs as an independent receiver would.
set -euo pipefail
if python3 -c 'import standardwebhooks' 2>/dev/null; then
    exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check 'standardwebhooks>=1.1,<2'
python3 -c 'import standardwebhooks'
