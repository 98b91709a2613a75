#!/usr/bin/env bash
# The long Schemathesis run: the same test CI runs short (crates/cli/tests/schemathesis.rs), on
# both stores, with many more examples per operation. Needs PostgreSQL (scripts/services.sh).
#   scripts/schemathesis.sh            # 500 examples per operation, 1 worker (two workers can
#                                      # trip a race inside Hypothesis, see BENCHMARKS.md)
#   EXAMPLES=2000 SEED=7 scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/python-test-deps.sh
export COFFER_TEST_REQUIRE_SERVICES=1
export COFFER_SCHEMATHESIS_EXAMPLES="${EXAMPLES:-500}"
export COFFER_SCHEMATHESIS_SEED="${SEED:-$(date +%s)}"
export COFFER_SCHEMATHESIS_WORKERS="${WORKERS:-1}"
echo "schemathesis: ${COFFER_SCHEMATHESIS_EXAMPLES} examples per operation, seed ${COFFER_SCHEMATHESIS_SEED}"
cargo test -p coffer --test schemathesis -- --nocapture --test-threads 1
