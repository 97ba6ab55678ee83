#!/usr/bin/env bash
# The test command: scripts/test.sh [extra `cargo test` arguments]
#
# Installs the tools the integration tests use when any is missing (Debian 12:
# docker-registry, skopeo, umoci, jq, zstd, openssl, runc, busybox-static,
# file, python3-jsonschema for /usr/bin/python3, and the OCI JSON schemas),
# then runs every test.
# Tests never skip a missing tool: they fail and point here.
# Fast when everything is present: the checks below only look.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*" >&2; }
trap 'rc=$?; printf "scripts/test.sh: FAILED (exit %s)\n" "$rc" >&2' ERR
die() { printf 'scripts/test.sh: error: %s\n' "$*" >&2; exit 1; }

OCI_SCHEMAS=/usr/share/gocode/src/github.com/opencontainers/image-spec/schema

# command (or check) -> Debian package
missing=()
for pair in docker-registry:docker-registry skopeo:skopeo umoci:umoci jq:jq zstd:zstd openssl:openssl mkfifo:coreutils runc:runc file:file; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
# The runtime test builds a base from a statically linked busybox.
# (ldd fails on a static program: its status is ignored, under pipefail.)
if ! { [ -x /bin/busybox ] && { ldd /bin/busybox 2>&1 || true; } | grep -q 'not a dynamic'; }; then
  missing+=(busybox-static)
fi
if ! /usr/bin/python3 -c 'import jsonschema' >/dev/null 2>&1; then
  missing+=(python3 python3-jsonschema)
fi
if [ ! -f "$OCI_SCHEMAS/image-manifest-schema.json" ]; then
  missing+=(golang-github-opencontainers-image-spec-dev)
fi

if [ ${#missing[@]} -gt 0 ]; then
  say "installing missing test tools: ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 \
    || die "apt-get not found; install by hand: ${missing[*]}"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo; install by hand: ${missing[*]}"
    sudo=(sudo)
  fi
  # Keep the docker-registry package from starting its system service on
  # install (the tests start their own, on a free loopback port): a
  # policy-rc.d that denies service starts, only while apt runs, only if
  # the machine has none.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 0755 "$policy"
    made_policy=1
  fi
  cleanup_policy() { if [ "$made_policy" = 1 ]; then "${sudo[@]}" rm -f "$policy"; fi; }
  trap cleanup_policy EXIT
  say "apt-get update"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    || die "apt-get update failed"
  say "apt-get install ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed: ${missing[*]}"
  cleanup_policy
  trap - EXIT
fi

# Whatever happened above, everything must be there now.
for cmd in docker-registry skopeo umoci jq zstd openssl mkfifo runc file cargo; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is still missing"
done
/usr/bin/python3 -c 'import jsonschema' 2>/dev/null || die "python3-jsonschema is still missing"
[ -f "$OCI_SCHEMAS/image-manifest-schema.json" ] || die "OCI schemas still missing in $OCI_SCHEMAS"
say "tools: $(skopeo --version), $(umoci --version), $(docker-registry --version 2>&1 | head -n1)"

# --no-fail-fast: one failing test target must not hide the others' results.
say "cargo test --locked --no-fail-fast --all-targets $*"
cargo test --locked --no-fail-fast --all-targets "$@"

# Doc tests need a library target (`cargo test --doc` fails without one).
if cargo metadata --locked --no-deps --format-version 1 \
   | jq -e '[.packages[].targets[].kind[]] | any(. == "lib" or . == "rlib")' >/dev/null; then
  say "cargo test --doc --locked --no-fail-fast $*"
  cargo test --doc --locked --no-fail-fast "$@"
else
  say "no library target: no doc tests to run"
fi
say "all tests passed"
