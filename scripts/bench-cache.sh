#!/usr/bin/env bash
# The incremental benchmark: scripts/bench-cache.sh [--write-book] [--keep]
#
# Not part of the test suite (`just bench` runs it after scripts/bench.sh).
# Builds imgc in release mode, copies the same ~200 MB tree as
# scripts/bench.sh, and times, in one run on one machine:
#   cold       a build with an empty layer cache (a fresh IMGC_CACHE_DIR)
#   no-cache   the same build with --no-cache (what the cache costs cold)
#   no-op      a rebuild with nothing changed, into the same output
#   one-file   a three-layer image (python libs, docs, a small app) after
#              one app file changed: only the app layer is built again
#   100 specs  of one context, sharing a docs layer, each with its own file:
#              one `imgc build` of all (-j 2 and -j 1) against 100 separate
#              invocations, each row from an empty cache; and -j 2 against
#              -j 1 with the docs layer already cached
#   ci-second  a second CI machine: an empty local cache and the
#              `--cache-repo` a first machine (ci-first: empty local cache,
#              empty cache repository) filled, on a loopback docker-registry
#   push       an app on a 200 MB registry base in the same registry, from an
#              empty local store: `build --push` without `--output` (shallow)
#              against `build --push --output` (which downloads the base)
# Targets (issue 9):
#   no-op    <= 5% of cold, and < 100 ms
#   one-file <= 20% of the cold three-layer build
#   cold     <= 1.05 x no-cache (the cache costs the cold path nothing
#            measurable: within the noise of these runs)
#   100 specs in one run <= 0.5 x 100 separate invocations; -j 2 >= 1.6 x
#            faster than -j 1 (reported from an empty cache and with the
#            shared layer cached)
#   ci-second compresses 0 layers and takes <= 30% of ci-first
#   shallow push: 0 base-layer bytes downloaded or uploaded
# Prints a Markdown table; --write-book puts it in book/src/benchmarks.md
# between `<!-- bench-cache:begin -->` and `<!-- bench-cache:end -->`.
#
# Ratios are medians of per-round ratios (see paired_ratio in
# scripts/bench-lib.sh).
#
# Environment: BENCH_TREE=DIR and BENCH_RUNS=N as for scripts/bench.sh
# (default 7 runs here: the fast rows are short).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BENCH_MARKER=bench-cache
source scripts/bench-lib.sh
bench_args "$@"
bench_runs 7

bench_need docker-registry:docker-registry curl:curl cargo:
say "cargo build --release --locked"
cargo build --release --locked
T=$(mktemp -d "${TMPDIR:-/tmp}/imgc-bench-cache.XXXXXX")
cleanup() { reg_stop; if [ "$KEEP" = 1 ]; then say "kept $T"; else rm -rf "$T"; fi; }
trap cleanup EXIT
cp target/release/imgc "$T/imgc"
IMGC=$T/imgc
unset IMGC_THREADS SOURCE_DATE_EPOCH IMGC_CACHE_DIR
COMMIT=$(bench_commit)

mkdir -p "$T/ctx/tree" "$T/ctx/app"
if [ -n "${BENCH_TREE:-}" ]; then
  [ -d "$BENCH_TREE" ] || die "BENCH_TREE=$BENCH_TREE is not a folder"
  cp -a "$BENCH_TREE/." "$T/ctx/tree/"
  TREE_DESC="content of \`$BENCH_TREE\`"
  LIBS='tree/**' DOCS='nothing/**'
else
  cp -a /usr/lib/python3* /usr/share/doc "$T/ctx/tree/"
  TREE_DESC="\`/usr/lib/python3*\` + \`/usr/share/doc\`"
  LIBS='tree/python3*/**' DOCS='tree/doc/**'
fi
for i in $(seq 1 20); do head -c 4096 /dev/urandom | base64 >"$T/ctx/app/module$i.py"; done
TAR_BYTES=$(tar -C "$T/ctx" -cf - . | wc -c)
NFILES=$(find "$T/ctx" -type f | wc -l)
sync
sleep 1 # past the fingerprints' racy window: the copy has settled

cat >"$T/ctx/one.toml" <<EOF
[image]
name = "bench.local/imgc/one"
platforms = ["linux/amd64"]
epoch = 0
compression = "zstd"

[[layers]]
name = "all"
files = [{ src = "tree/**", dst = "/" }]
EOF
cat >"$T/ctx/three.toml" <<EOF
[image]
name = "bench.local/imgc/three"
platforms = ["linux/amd64"]
epoch = 0
compression = "zstd"

[[layers]]
name = "libs"
files = [{ src = "$LIBS", dst = "/", optional = true }]

[[layers]]
name = "docs"
files = [{ src = "$DOCS", dst = "/", optional = true }]

[[layers]]
name = "app"
files = [{ src = "app/**", dst = "/app/" }]
EOF

# 100 specs of one context (the same tree): a shared docs layer, and a
# file of their own.
SPECS=()
for i in $(seq -w 1 100); do
  mkdir -p "$T/ctx/specs/s$i"
  echo "spec $i" >"$T/ctx/specs/s$i/own.txt"
  cat >"$T/ctx/specs/s$i/image.toml" <<EOF
[image]
name = "bench.local/imgc/s$i"
platforms = ["linux/amd64"]
epoch = 0
compression = "zstd"

[[layers]]
name = "docs"
files = [{ src = "$DOCS", dst = "/usr/share/", optional = true }]

[[layers]]
name = "own"
files = [{ src = "specs/s$i/own.txt", dst = "/own.txt" }]
EOF
  SPECS+=("$T/ctx/specs/s$i/image.toml")
done

q() { printf '%q' "$1"; }
build() { # OUT CACHE SPEC [ARGS...]
  local out=$1 cache=$2 spec=$3; shift 3
  printf 'IMGC_CACHE_DIR=%s %s build %s --output oci:%s -q %s >/dev/null' \
    "$(q "$cache")" "$(q "$IMGC")" "$(q "$spec")" "$(q "$out")" "$*"
}
NAMES=() PREPS=() CMDS=()
add() { NAMES+=("$1"); PREPS+=("$2"); CMDS+=("$3"); }
fresh() { printf 'rm -rf %s %s' "$(q "$1")" "$(q "$2")"; }
add no-cache "$(fresh "$T/o-nc" "$T/c-nc")" "$(build "$T/o-nc" "$T/c-nc" "$T/ctx/one.toml" --no-cache)"
add cold "$(fresh "$T/o-cold" "$T/c-cold")" "$(build "$T/o-cold" "$T/c-cold" "$T/ctx/one.toml")"
# The no-op rebuild: the cache and output of a cold build made once, then
# built again and again (each run is a no-op rebuild of the last).
add no-op ":" "$(build "$T/o-noop" "$T/c-noop" "$T/ctx/one.toml")"
add cold-three "$(fresh "$T/o-3" "$T/c-3")" "$(build "$T/o-3" "$T/c-3" "$T/ctx/three.toml")"
# One app file changed before each run (a new line: a new size and content).
add one-file "echo \"# \$RANDOM\$RANDOM\" >> $(q "$T/ctx/app/module7.py")" \
  "$(build "$T/o-3w" "$T/c-3w" "$T/ctx/three.toml")"

# The many-spec rows run in their own folders (outputs go to ./imgc-out).
ALL_SPECS=$(printf '%q ' "${SPECS[@]}")
many() { # DIR CACHE ARGS...: one run of all specs
  local dir=$1 cache=$2; shift 2
  printf 'cd %s && IMGC_CACHE_DIR=%s %s build -q --context %s %s %s >/dev/null' \
    "$(q "$dir")" "$(q "$cache")" "$(q "$IMGC")" "$(q "$T/ctx")" "$*" "$ALL_SPECS"
}
separate() { # DIR CACHE: one invocation per spec
  printf 'cd %s && for s in %s; do IMGC_CACHE_DIR=%s %s build -q --context %s "$s" >/dev/null || exit 1; done' \
    "$(q "$1")" "$ALL_SPECS" "$(q "$2")" "$(q "$IMGC")" "$(q "$T/ctx")"
}
# The last round's outputs and caches (thousands of inodes) are moved aside,
# not deleted, until the end: on ext4 without a journal, creating inodes
# soon after deleting many scans the recently deleted ones (the kernel's
# recently_deleted(), a fifth of a run's samples), which grows round by
# round and is no cost of the build.
mkdir -p "$T/trash"
aside() { # DIR...: a command moving each DIR that exists into $T/trash
  local d
  for d in "$@"; do
    printf '{ [ ! -e %s ] || mv %s %s/$(date +%%s%%N); } && ' "$(q "$d")" "$(q "$d")" "$(q "$T/trash")"
  done
}
freshdir() { printf '%smkdir -p %s' "$(aside "$1" "$2")" "$(q "$1")"; }
add many-separate "$(freshdir "$T/m-sep" "$T/c-sep")" "$(separate "$T/m-sep" "$T/c-sep")"
add many-j1 "$(freshdir "$T/m-j1" "$T/c-j1")" "$(many "$T/m-j1" "$T/c-j1" -j 1)"
add many-j2 "$(freshdir "$T/m-j2" "$T/c-j2")" "$(many "$T/m-j2" "$T/c-j2" -j 2)"
# The same with the shared docs layer in the cache (primed below): what
# threads do for the specs' own work, without the one cold layer every
# spec waits for.
add many-warm-j1 "$(aside "$T/m-wj1")mkdir -p $(q "$T/m-wj1")" "$(many "$T/m-wj1" "$T/c-w" -j 1)"
add many-warm-j2 "$(aside "$T/m-wj2")mkdir -p $(q "$T/m-wj2")" "$(many "$T/m-wj2" "$T/c-w" -j 2)"

# A registry for the second-CI-machine and push rows.
reg_start "$T/reg"
REG=127.0.0.1:$REG_PORT
# Second CI machine: each round, the first machine fills a new cache
# repository (round N: cacheN) from an empty local cache; the second, with
# an empty local cache too, takes every layer from it.
echo 0 >"$T/ci-round"
ci() { # CACHE OUT [ARGS...]
  local cache=$1 out=$2; shift 2
  printf 'IMGC_CACHE_DIR=%s %s build %s --output oci:%s -q --cache-repo %s/cache$(cat %s) --insecure-registry %s %s' \
    "$(q "$cache")" "$(q "$IMGC")" "$(q "$T/ctx/one.toml")" "$(q "$out")" "$REG" "$(q "$T/ci-round")" "$REG" "$*"
}
add ci-first "$(fresh "$T/o-ci1" "$T/c-ci1") && echo \$((\$(cat $(q "$T/ci-round")) + 1)) >$(q "$T/ci-round")" \
  "$(ci "$T/c-ci1" "$T/o-ci1") >/dev/null"
add ci-second "$(fresh "$T/o-ci2" "$T/c-ci2")" "$(ci "$T/c-ci2" "$T/o-ci2" --format json) >$(q "$T/ci-second.json")"

# Shallow push: a 200 MB base (incompressible) pushed once, untimed; an app
# of 20 small files on it, pushed from an empty local store each run.
mkdir -p "$T/basectx" "$T/appctx" "$T/pushdir"
head -c 200M /dev/urandom >"$T/basectx/blob.bin"
printf '[image]\nname = "%s/base"\ntags = ["1"]\nplatforms = ["linux/amd64"]\n\n[[layers]]\nname = "blob"\nfiles = [{ src = "blob.bin", dst = "/opt/blob.bin" }]\n' \
  "$REG" >"$T/basectx/image.toml"
cp -a "$T/ctx/app" "$T/appctx/app"
printf '[image]\nname = "%s/app"\nbase = "%s/base:1"\n\n[[layers]]\nname = "app"\nfiles = [{ src = "app/**", dst = "/app/" }]\n' \
  "$REG" "$REG" >"$T/appctx/image.toml"
say "pushing the 200 MB base to $REG/base:1"
IMGC_CACHE_DIR=$T/c-base "$IMGC" build "$T/basectx/image.toml" --push -q --insecure-registry "$REG" >/dev/null \
  || die "pushing the base failed"
push() { # CACHE [ARGS...]
  local cache=$1; shift
  printf 'cd %s && IMGC_CACHE_DIR=%s %s build %s --push -q --insecure-registry %s %s' \
    "$(q "$T/pushdir")" "$(q "$cache")" "$(q "$IMGC")" "$(q "$T/appctx/image.toml")" "$REG" "$*"
}
add push-deep "$(fresh "$T/o-deep" "$T/c-deep")" "$(push "$T/c-deep" --output "oci:$(q "$T/o-deep")") >/dev/null"
add push-shallow "rm -rf $(q "$T/c-sh")" "$(push "$T/c-sh" --format json) >$(q "$T/shallow.json")"

say "priming the no-op and one-file rows' caches"
bash -c "$(build "$T/o-noop" "$T/c-noop" "$T/ctx/one.toml")" || die "priming build failed"
bash -c "$(build "$T/o-3w" "$T/c-3w" "$T/ctx/three.toml")" || die "priming build failed"
mkdir -p "$T/m-wj1" && bash -c "$(many "$T/m-wj1" "$T/c-w" -j 2)" || die "priming build failed"
sleep 1

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "input: $TAR_BYTES bytes of tar, $NFILES files; $RUNS runs per method (round-robin)"
mkdir -p "$T/times"
for ((r = 1; r <= RUNS; r++)); do
  for i in "${!NAMES[@]}"; do
    bash --norc -o pipefail -c "${PREPS[$i]}" >/dev/null || die "${NAMES[$i]}: prepare failed"
    t0=$(date +%s.%N)
    bash --norc -o pipefail -c "${CMDS[$i]}" || die "${NAMES[$i]} failed: ${CMDS[$i]}"
    t1=$(date +%s.%N)
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    echo "$s" >>"$T/times/${NAMES[$i]}.all"
    say "round $r/$RUNS ${NAMES[$i]}: ${s}s"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
for n in "${NAMES[@]}"; do
  sort -g "$T/times/$n.all" | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    print m, v[1], v[NR] }' >"$T/times/$n"
done
# The same image from the cold build, the no-op rebuild and --no-cache.
same=$(for o in o-nc o-cold o-noop; do cat "$T/$o/index.json"; echo; done | sort -u | wc -l)
[ "$same" = 1 ] && SAME=yes || SAME="NO ($same index files)"

row() { # NAME LABEL PEER KIND(ratio|ms|-) LIMIT [MS_LIMIT]
  local n=$1 label=$2 peer=$3 limit=$4 ms=${5:--}
  read -r med min max <"$T/times/$n"
  local ratio
  ratio=$(paired_ratio "$T/times/$n.all" "$T/times/$peer.all")
  awk -v label="$label" -v med="$med" -v min="$min" -v max="$max" -v ratio="$ratio" -v limit="$limit" -v ms="$ms" \
      -v self=$([ "$n" = "$peer" ] && echo 1 || echo 0) 'BEGIN {
    target = "–"
    if (limit != "-") target = sprintf("≤ %.2f×: %s", limit, ratio <= limit ? "**holds**" : "**missed**")
    if (ms != "-") target = target sprintf("; < %d ms: %s", ms, med * 1000 < ms ? "**holds**" : "**missed**")
    printf "| %s | %.3f (%.3f–%.3f) | %s | %s |\n", label, med, min, max, self ? "1 (reference)" : sprintf("%.3f×", ratio), target }'
}
TABLE=$(
  echo "| build | seconds: median (min–max) | time vs reference | target |"
  echo "|---|---|---|---|"
  row no-cache "one layer, \`--no-cache\`" no-cache -
  row cold "one layer, cold, empty cache (vs \`--no-cache\`)" no-cache 1.05
  row no-op "one layer, rebuild with nothing changed (vs cold)" cold 0.05 100
  row cold-three "three layers, cold, empty cache" cold-three -
  row one-file "three layers, one app file changed (vs cold)" cold-three 0.20
  row many-separate "100 specs, 100 separate \`imgc build\`s" many-separate -
  row many-j2 "100 specs, one \`imgc build\`, -j 2 (vs separate)" many-separate 0.5
  row many-j1 "100 specs, one \`imgc build\`, -j 1 (vs separate)" many-separate -
  row many-warm-j1 "100 specs, docs layer cached, -j 1" many-warm-j1 -
  row many-warm-j2 "100 specs, docs layer cached, -j 2 (vs -j 1)" many-warm-j1 -
  row ci-first "one layer, first CI machine: empty local cache, empty \`--cache-repo\`" ci-first -
  row ci-second "one layer, second CI machine: empty local cache, filled \`--cache-repo\` (vs first)" ci-first 0.30
  row push-deep "app on a 200 MB registry base, empty store, \`build --push --output\`" push-deep -
  row push-shallow "the same, \`build --push\` without \`--output\` (shallow; vs \`--output\`)" push-deep -
)
speedup() { # J1-TIMES J2-TIMES: -j 2 against -j 1, against the target
  awk -v r="$(paired_ratio "$1" "$2")" 'BEGIN {
    printf "%.2f× (target ≥ 1.6×: %s)", r, (r >= 1.6 ? "**holds**" : "**missed**") }'
}
SPEEDUP=$(speedup "$T/times/many-j1.all" "$T/times/many-j2.all")
WARM_SPEEDUP=$(speedup "$T/times/many-warm-j1.all" "$T/times/many-warm-j2.all")
# What the second CI machine's last run took from the cache repository, and
# whether the first and second machines made the cold build's image.
json_count() { grep -cE "$1" "$2" || true; } # PATTERN FILE
BUILT=$(json_count '"origin": "built"' "$T/ci-second.json")
FROM_REPO=$(json_count '"cache": "repo"' "$T/ci-second.json")
same_ci=$(for o in o-cold o-ci1 o-ci2; do cat "$T/$o/index.json"; echo; done | sort -u | wc -l)
[ "$same_ci" = 1 ] && SAME_CI=yes || SAME_CI="NO ($same_ci index files)"
CI_NOTE="its last run took $FROM_REPO of $BUILT layer(s) from the cache repository (target: all, 0 compressed: $([ "$BUILT" -gt 0 ] && [ "$FROM_REPO" = "$BUILT" ] && echo '**holds**' || echo '**missed**')); both machines made the cold build's image: $SAME_CI. Each round used a new cache repository on one docker-registry (plain HTTP, 127.0.0.1)."
json_num() { grep -oE "\"$1\": [0-9]+" "$2" | head -1 | grep -oE '[0-9]+$'; } # KEY FILE
DOWN=$(json_num downloaded "$T/shallow.json")
UP=$(json_num uploaded "$T/shallow.json")
MOUNTED=$(json_num mounted "$T/shallow.json")
EXISTED=$(json_num existed "$T/shallow.json")
BASE_BYTES=$(stat -c %s "$T/basectx/blob.bin")
PUSH_NOTE="the last shallow run downloaded $DOWN bytes (the base's config) and uploaded $UP; base layers $MOUNTED bytes mounted, $EXISTED bytes already there. 0 bytes of the $BASE_BYTES-byte base layer downloaded or uploaded: $([ "$DOWN" -lt 65536 ] && [ "$UP" -lt 65536 ] && echo '**holds**' || echo '**missed**'). The \`--output\` build downloads the whole base for its layout."
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
IN_MB=$(awk -v b="$TAR_BYTES" 'BEGIN { printf "%.1f", b / 1e6 }')
REPORT=$(
  echo "Run $(date -u +'%Y-%m-%d %H:%M UTC') on $(nproc) cores ($CPU), imgc commit \`$COMMIT\`, zstd."
  echo
  echo "$TABLE"
  echo
  echo "- Input: $TREE_DESC and an app folder of 20 small files, $NFILES files, a $IN_MB MB tar; the three-layer image splits it into python libs, docs and the app."
  echo "- $RUNS runs per row, round-robin, wall time of the whole \`imgc build\` process; warm page cache. \"Time vs reference\" is the median of the rounds' ratios (each round runs a row and its reference on the same machine state), not the ratio of the medians shown."
  echo "- Same index from \`--no-cache\`, the cold build and the no-op rebuild: $SAME."
  echo "- 100 specs of one context share a docs layer (\`$DOCS\`) and have a file each; the rows up to \`-j 1\` start from an empty cache. -j 2 against -j 1 (median of the rounds' ratios): $SPEEDUP; with the docs layer already in the cache (the rows \"docs layer cached\", outputs new): $WARM_SPEEDUP."
  echo "- Second CI machine: $CI_NOTE"
  echo "- Shallow push: $PUSH_NOTE"
  echo "- Load average before/after: $LOAD_BEFORE / $LOAD_AFTER."
)
printf '%s\n' "$REPORT"
if [ "$WRITE_BOOK" = 1 ]; then
  printf '%s\n' "$REPORT" >"$T/report.md"
  bench_write_book "$T/report.md" "$T/book.md"
fi
