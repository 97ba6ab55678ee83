# imgc's tasks. `just` is not packaged in Debian 12: `cargo install just`.
# `just --list` shows the recipes.

# List the recipes.
default:
    @{{just_executable()}} --list

# Build the release binary (target/release/imgc).
build:
    cargo build --release

# Run the whole test suite (installs missing test tools with apt-get).
test:
    scripts/test.sh

# Check formatting and lints, as CI does.
lint:
    cargo fmt --check && cargo clippy --all-targets --locked -- -D warnings

# Format the code.
fmt:
    cargo fmt

# Regenerate schema/imgc.schema.json from the spec types.
schema:
    cargo run --quiet -- schema > schema/imgc.schema.json

# Build the book into target/book (installs mdBook when missing).
book:
    command -v mdbook >/dev/null 2>&1 || cargo install mdbook --locked
    mdbook build book

# Run the benchmarks: build (scripts/bench.sh), rebuilds (scripts/bench-cache.sh), then push (scripts/bench-push.sh); --write-book also updates book/src/benchmarks.md.
bench *args:
    scripts/bench.sh {{args}}
    scripts/bench-cache.sh {{args}}
    scripts/bench-push.sh {{args}}

# Run the rebuild benchmark only (scripts/bench-cache.sh: the layer cache, cold, no-op and one-file rebuilds).
bench-cache *args:
    scripts/bench-cache.sh {{args}}

# Run the push benchmark only (scripts/bench-push.sh; --write-book also updates book/src/benchmarks.md).
bench-push *args:
    scripts/bench-push.sh {{args}}

# Build both examples into ./imgc-out.
example:
    cargo run --release -- build examples/hello/image.toml
    cargo run --release -- build examples/multi-arch/image.toml
