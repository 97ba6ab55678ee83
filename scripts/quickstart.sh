#!/bin/sh
# The README's first command: builds imgc, compiles the greeter example for
# this machine (a static program, with rustc, no crates), and builds its image
# for this machine's platform into ./imgc-out/greeter. Needs no registry and
# no network beyond Cargo fetching imgc's crates.
#   scripts/quickstart.sh
#   podman run --rm oci:imgc-out/greeter:latest
set -eu
cd "$(dirname "$0")/.."
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "quickstart: the greeter example builds for amd64 and arm64, not $(uname -m)" >&2; exit 1 ;;
esac
cargo build --release --locked
mkdir -p "examples/greeter/bin/$arch"
# Static, so that it runs on `scratch` (glibc's static libc comes with gcc's libc6-dev).
rustc --edition 2021 -O -C panic=abort -C target-feature=+crt-static \
  -o "examples/greeter/bin/$arch/greeter" examples/greeter/src/main.rs
# The last commit's time as the build time, so that the image is not "56 years old".
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH
target/release/imgc build examples/greeter/image.toml --platform "linux/$arch"
echo "Run it:  podman run --rm oci:imgc-out/greeter:latest" >&2
