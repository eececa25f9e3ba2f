#!/usr/bin/env bash
# Fuzzes the parsers that see untrusted input: cache records, user names and the mapping, IAM key bodies, instance tag values,
# --key-options, and chained key commands' output lines. Each target runs for FUZZ_SECONDS (default 20) from the seeds in fuzz/seeds/<target>
# plus the corpus it grows in fuzz/corpus/<target>. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/; add it as a regression test. Long runs: FUZZ_SECONDS=3600 tests/fuzz.sh
# (or one target: cargo +nightly fuzz run -O --sanitizer none key -- -max_total_time=3600).
#
# cargo-fuzz needs a nightly toolchain; the crate forbids unsafe code, so targets run without ASan
# (--sanitizer none), which keeps coverage-guided fuzzing and makes each run ~3x faster.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
SECONDS_EACH=${FUZZ_SECONDS:-20}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal ||
    fail "cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || fail "cannot install cargo-fuzz"
cargo +nightly fuzz build -O --sanitizer none
for t in $(cargo +nightly fuzz list); do
    mkdir -p "fuzz/corpus/$t"
    if ! cargo +nightly fuzz run -O --sanitizer none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"target/fuzz-$t.log" 2>&1; then
        tail -30 "target/fuzz-$t.log" >&2
        fail "fuzz target $t crashed; input in fuzz/artifacts/$t/"
    fi
    pass "fuzz $t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "target/fuzz-$t.log"), no crash"
done
