#!/usr/bin/env bash
# Python packages the tests use: the Standard Webhooks reference library, which verifies
# rotated deliveries in crates/events/tests/webhook_secrets.rs as an independent receiver would,
# and Schemathesis, which checks the server against its own /openapi.json
# (crates/cli/tests/schemathesis.rs). Quick when both are already there.
set -euo pipefail
wanted=()
python3 -c 'import standardwebhooks' 2>/dev/null || wanted+=('standardwebhooks>=1.1,<2')
python3 -c 'import schemathesis, sys; sys.exit(not schemathesis.__version__.startswith("4."))' 2>/dev/null \
    || wanted+=('schemathesis>=4.32,<5')
if [ ${#wanted[@]} -eq 0 ]; then
    exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check "${wanted[@]}"
python3 -c 'import standardwebhooks, schemathesis'
