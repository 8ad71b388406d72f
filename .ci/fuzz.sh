#!/usr/bin/env bash
# A short coverage-guided run of every cargo-fuzz target (fuzz/), on stable without a
# sanitizer (`-s none`: panics, aborts, hangs and runaway memory are still caught).
#   TANDEM_FUZZ_SECONDS  seconds per target (default 10; 0 skips fuzzing)
# Seeds: fuzz/seeds/<target>/ (committed) and, for the audio targets, the fixture chunks
# prefixed with the chunk-size byte the targets split at. A crash fails the run; its input is
# left in fuzz/artifacts/<target>/ to be kept under fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${TANDEM_FUZZ_SECONDS:-10}"
if [ "$secs" = 0 ]; then
    echo "fuzzing skipped (TANDEM_FUZZ_SECONDS=0)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cd fuzz
# The fuzz crate is its own workspace; start from the main lock so it fuzzes the same
# dependency versions the server ships with.
[ -f Cargo.lock ] || cp ../Cargo.lock Cargo.lock
cargo fuzz build -s none -O

seed_audio() {
    local target="$1" step="$2"
    mkdir -p "corpus/$target"
    for chunk in ../fixtures/*/chunk-00[0-3].bin; do
        [ -f "$chunk" ] || continue
        local name
        name="$(basename "$(dirname "$chunk")")-$(basename "$chunk")"
        { printf "\\x$step"; cat "$chunk"; } > "corpus/$target/$name"
    done
}
seed_audio webm_demux ff
seed_audio ogg_demux ff
seed_audio mp4_demux ff
seed_audio transcoder ff

for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    echo "== fuzz $target for ${secs}s"
    log="$(mktemp)"
    if ! cargo fuzz run -s none -O "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^Done" "$log" || true
    rm -f "$log"
done
