#!/usr/bin/env bash
# The push benchmark: scripts/bench-push.sh [--write-book] [--keep]   (`just bench-push`)
#
# Not part of the test suite. Builds imgc in release mode, builds a ~200 MB
# image into an OCI layout (untimed), and times, in one run on one machine:
#   1. a push of that layout to an empty registry: `imgc push` against
#      `skopeo copy --all --preserve-digests` of the same layout;
#   2. the same push again, to a registry that already holds every blob.
# The registry is a docker-registry (distribution), plain HTTP on a free
# 127.0.0.1 port, which this script starts and stops itself: a fresh one with
# an empty folder for every push of (1), one shared by all re-pushes of (2).
# After every push the script checks that the registry serves the layout's
# index digest (sha256 of `skopeo inspect --raw`) and every blob; a failed
# or wrong imgc push stops the script. Prints a Markdown section on stdout;
# --write-book also puts it in book/src/benchmarks.md between the markers
# `<!-- bench-push:begin -->` and `<!-- bench-push:end -->`.
#
# The image: one gzip layer from the input tree (as in scripts/bench.sh), and
# one layer of incompressible bytes, so that about 200 MB of blobs go over
# the wire. `platforms = ["linux/amd64"]`, so the layout's tag names an image
# index with one manifest.
#
# Environment:
#   BENCH_TREE=DIR         the tree layer holds DIR's content instead of
#                          /usr/lib/python3* + /usr/share/doc (~214 MB tar, ~97 MB gzip)
#   BENCH_RANDOM_SIZE=S    size of the incompressible layer's content, as for
#                          `numfmt --from=iec` (default 100M; 0 leaves the layer out)
#   BENCH_RUNS=N           timed runs per method, the median is reported (default 3)
#   BENCH_TIMER=T          for the re-pushes: auto (hyperfine if installed, else
#                          loop), hyperfine, or loop (own loop with `date +%s.%N`,
#                          round-robin). The pushes to an empty registry always
#                          use the own loop, alternating the tools, since each
#                          needs a fresh registry before and a check after it.
#
# Caches cannot be dropped here (no root on CI, shared machine): the layout's
# blobs are read once before timing, so both tools read them from the page
# cache. The registry writes into a temporary folder on the same disk.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BENCH_MARKER=bench-push
source scripts/bench-lib.sh
bench_args "$@"
bench_runs 3
RANDOM_SIZE=${BENCH_RANDOM_SIZE:-100M}
RANDOM_BYTES=$(numfmt --from=iec "$RANDOM_SIZE" 2>/dev/null) \
  || die "BENCH_RANDOM_SIZE must be a size like 100M or 0, not \`$RANDOM_SIZE\`"

# ---------------------------------------------------------------- tools
bench_need skopeo:skopeo docker-registry:docker-registry curl:curl sha256sum:coreutils numfmt:coreutils awk:mawk tar:tar cargo:

TIMER=${BENCH_TIMER:-auto}
case $TIMER in
  auto) if command -v hyperfine >/dev/null 2>&1; then TIMER=hyperfine; else TIMER=loop; fi ;;
  hyperfine) command -v hyperfine >/dev/null 2>&1 || die "BENCH_TIMER=hyperfine but hyperfine is not installed (apt-get install hyperfine)" ;;
  loop) ;;
  *) die "BENCH_TIMER must be auto, hyperfine or loop, not \`$TIMER\`" ;;
esac

# skopeo keeps the layout's digests only when told to (and copies only the
# host's platform of an index unless told --all); old versions lack the flag.
SKOPEO_FLAGS=(--all)
if skopeo copy --help 2>&1 | grep -q -- '--preserve-digests'; then
  SKOPEO_FLAGS+=(--preserve-digests)
fi

# ---------------------------------------------------------------- imgc
# Other work on the machine, before our own build adds to the load average.
busy() { echo $(($(pgrep -c -x rustc || true) + $(pgrep -c -x cargo || true))); }
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_START=$(busy)
say "cargo build --release --locked"
cargo build --release --locked
T=$(mktemp -d -t imgc-bench-push.XXXXXX)
cleanup() { reg_stop; if [ "$KEEP" = 1 ]; then say "kept $T"; else rm -rf "$T"; fi; }
trap cleanup EXIT
# A private copy: a rebuild by someone else during the run must not swap it.
cp target/release/imgc "$T/imgc"
IMGC=$T/imgc
unset IMGC_THREADS SOURCE_DATE_EPOCH IMGC_CONFIG
# imgc keeps pulled blobs there; a push needs none, but nothing of the user's.
export IMGC_CACHE_DIR=$T/cache

COMMIT=$(bench_commit)

# ---------------------------------------------------------------- image
mkdir -p "$T/ctx/tree"
if [ -n "${BENCH_TREE:-}" ]; then
  [ -d "$BENCH_TREE" ] || die "BENCH_TREE=$BENCH_TREE is not a folder"
  say "copying $BENCH_TREE"
  cp -a "$BENCH_TREE/." "$T/ctx/tree/"
  TREE_DESC="content of \`$BENCH_TREE\`"
else
  say "copying /usr/lib/python3* /usr/share/doc"
  cp -a /usr/lib/python3* /usr/share/doc "$T/ctx/tree/"
  TREE_DESC="\`/usr/lib/python3*\` + \`/usr/share/doc\`"
fi
TAR_BYTES=$(tar -C "$T/ctx/tree" -cf - . | wc -c)
[ "$TAR_BYTES" -gt 1024 ] || die "the input tree is empty"

# The name is not used by `imgc push`, which is given the target; the port
# differs from run to run.
cat >"$T/ctx/image.toml" <<EOF
[image]
name = "127.0.0.1:5000/bench"
platforms = ["linux/amd64"]
epoch = 0

[[layers]]
name = "tree"
files = [{ src = "tree/**", dst = "/data/" }]
EOF
if [ "$RANDOM_BYTES" -gt 0 ]; then
  say "making $RANDOM_SIZE of incompressible data"
  mkdir -p "$T/ctx/random"
  head -c "$RANDOM_BYTES" /dev/urandom | split -b 32M -d - "$T/ctx/random/part-"
  cat >>"$T/ctx/image.toml" <<EOF

[[layers]]
name = "random"
files = [{ src = "random/**", dst = "/data/random/" }]
EOF
fi

say "imgc build (untimed)"
LAYOUT=$T/layout
BUILD_DIGEST=$("$IMGC" build "$T/ctx/image.toml" --no-cache --output "oci:$LAYOUT" -q) || die "imgc build failed"
# imgc writes compact JSON: one entry, tagged with the spec's tag (`latest`).
INDEX_JSON=$(tr -d ' \n' <"$LAYOUT/index.json")
TAG=$(grep -o '"org.opencontainers.image.ref.name":"[^"]*"' <<<"$INDEX_JSON" | head -n1 | cut -d'"' -f4)
INDEX_DIGEST=$(grep -o '"digest":"sha256:[0-9a-f]*"' <<<"$INDEX_JSON" | head -n1 | cut -d'"' -f4)
[ -n "$TAG" ] || die "no tagged entry in the layout's index.json: $INDEX_JSON"
[ -n "$INDEX_DIGEST" ] || die "no tagged entry in the layout's index.json: $INDEX_JSON"
[ "$INDEX_DIGEST" = "$BUILD_DIGEST" ] || die "imgc build printed $BUILD_DIGEST, index.json names $INDEX_DIGEST"
[ "$(grep -o '"digest"' <<<"$INDEX_JSON" | wc -l)" = 1 ] || die "expected one entry in the layout's index.json: $INDEX_JSON"
[ "$KEEP" = 1 ] || rm -rf "$T/ctx"  # the layout is all that is pushed
BLOBS=()
for f in "$LAYOUT"/blobs/sha256/*; do BLOBS+=("sha256:${f##*/}"); done
NBLOBS=${#BLOBS[@]}
PUSH_BYTES=$(cat "$LAYOUT"/blobs/sha256/* | wc -c)  # also warms the page cache
# The layer sizes, from the one manifest (compact JSON, no arrays in a descriptor).
MANIFEST=$(grep -o '"digest":"sha256:[0-9a-f]*"' "$LAYOUT/blobs/sha256/${INDEX_DIGEST#sha256:}" | head -n1 | cut -d'"' -f4)
LAYER_SIZES=$(sed 's/.*"layers":\[\([^]]*\)\].*/\1/' "$LAYOUT/blobs/sha256/${MANIFEST#sha256:}" | grep -o '"size":[0-9]*' \
  | awk -F: '{ printf "%s%.1f", (NR > 1 ? " + " : ""), $2 / 1e6 }')
[ -n "$LAYER_SIZES" ] || die "no layers in the manifest $MANIFEST"
sync  # no write-back of the build during the timed runs
SRC="oci:$LAYOUT:$TAG"

# ---------------------------------------------------------------- registry
q() { printf '%q' "$1"; }
imgc_cmd() { # PORT: the imgc push command line
  printf '%s push %s 127.0.0.1:%s/bench:1 --insecure-registry 127.0.0.1:%s -q' "$(q "$IMGC")" "$(q "$SRC")" "$1" "$1"
}
skopeo_cmd() { # PORT: the skopeo copy command line
  printf 'skopeo --insecure-policy copy -q %s --dest-tls-verify=false %s docker://127.0.0.1:%s/bench:1' "${SKOPEO_FLAGS[*]}" "$(q "$SRC")" "$1"
}

# What the registry serves as bench:1 (sha256 of the raw bytes), and whether
# it has every blob of the layout (manifests count as manifests).
served_digest() { # PORT
  local raw
  raw=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$1/bench:1" | sha256sum) || return 1
  echo "sha256:${raw%% *}"
}
missing_blobs() { # PORT: prints the number of layout blobs the registry lacks
  local d n=0 base="http://127.0.0.1:$1/v2/bench"
  local accept='application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json'
  for d in "${BLOBS[@]}"; do
    [ "$(curl -s -o /dev/null -I -w '%{http_code}' "$base/blobs/$d")" = 200 ] && continue
    [ "$(curl -s -o /dev/null -I -w '%{http_code}' -H "Accept: $accept" "$base/manifests/$d")" = 200 ] && continue
    n=$((n + 1))
  done
  echo "$n"
}
# check TOOL PORT: after TOOL pushed; sets GOT. imgc must push the layout as
# it is; skopeo's result is reported, not required.
declare -A PRESERVED=([imgc]=yes [skopeo]=yes)
check() {
  local tool=$1 port=$2 miss
  GOT=$(served_digest "$port") || die "$tool: skopeo inspect --raw of 127.0.0.1:$port/bench:1 failed"
  if [ "$GOT" != "$INDEX_DIGEST" ]; then
    [ "$tool" = skopeo ] || die "$tool pushed, but the registry serves $GOT, not the layout's index $INDEX_DIGEST"
    PRESERVED[$tool]="NO (the registry serves $GOT)"
    return 0
  fi
  miss=$(missing_blobs "$port")
  [ "$miss" = 0 ] || die "$tool pushed, but the registry lacks $miss of the layout's $NBLOBS blobs"
}
run_timed() { # NAME CMD: runs CMD once, appends its seconds to $T/times/NAME.all
  local name=$1 cmd=$2 t0 t1 s
  t0=$(date +%s.%N)
  bash --norc -o pipefail -c "$cmd" >"$T/out" 2>"$T/err" \
    || { cat "$T/err" >&2; die "$name failed: $cmd"; }
  t1=$(date +%s.%N)
  s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
  echo "$s" >>"$T/times/$name.all"
  LAST=$s
}
summarize() { # NAME: median min max of $T/times/NAME.all into $T/times/NAME
  sort -g "$T/times/$1.all" | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    print m, v[1], v[NR] }' >"$T/times/$1"
}

NPROC=$(nproc)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_BEFORE=$(busy)
mkdir -p "$T/times"
say "image: $NBLOBS blobs, $PUSH_BYTES bytes, index $INDEX_DIGEST, source $SRC; $RUNS runs per method; load average: $LOAD_BEFORE"
say "skopeo flags: ${SKOPEO_FLAGS[*]}"

# ---------------------------------------------------------------- 1. empty registry
# Round-robin, the order alternating (imgc skopeo skopeo imgc ...), so that a
# burst of load from elsewhere, or a drift, hits both tools alike.
for ((r = 1; r <= RUNS; r++)); do
  order=(imgc skopeo)
  [ $((r % 2)) = 1 ] || order=(skopeo imgc)
  for tool in "${order[@]}"; do
    rm -rf "$IMGC_CACHE_DIR"
    reg_start "$T/reg"
    if [ "$tool" = imgc ]; then cmd=$(imgc_cmd "$REG_PORT"); else cmd=$(skopeo_cmd "$REG_PORT"); fi
    run_timed "$tool-cold" "$cmd"
    if [ "$tool" = imgc ]; then
      [ "$(tr -d '\n' <"$T/out")" = "$INDEX_DIGEST" ] || die "imgc push printed \`$(cat "$T/out")\`, not $INDEX_DIGEST"
    fi
    check "$tool" "$REG_PORT"
    reg_stop
    say "round $r/$RUNS $tool, empty registry: ${LAST}s"
  done
done
rm -rf "$T/reg"

# ---------------------------------------------------------------- 2. every blob there
reg_start "$T/reg"
say "filling the registry on port $REG_PORT (imgc push, untimed)"
run_timed fill "$(imgc_cmd "$REG_PORT")"
check imgc "$REG_PORT"
IMGC_AGAIN=$(imgc_cmd "$REG_PORT")
SKOPEO_AGAIN=$(skopeo_cmd "$REG_PORT")
if [ "$TIMER" = hyperfine ]; then
  # No shell in between: the times are in milliseconds.
  hyperfine --style basic -N --warmup 1 --runs "$RUNS" --export-csv "$T/times/again.csv" \
    --command-name imgc-again "$IMGC_AGAIN" --command-name skopeo-again "$SKOPEO_AGAIN" >&2
  # command,mean,stddev,median,user,system,min,max
  for n in imgc-again skopeo-again; do
    awk -F, -v n="$n" '$1 == n { print $4, $7, $8 }' "$T/times/again.csv" >"$T/times/$n"
    [ -s "$T/times/$n" ] || die "no hyperfine result for $n"
  done
  check imgc "$REG_PORT"
  check skopeo "$REG_PORT"
else
  run_timed warmup "$IMGC_AGAIN"
  run_timed warmup "$SKOPEO_AGAIN"
  for ((r = 1; r <= RUNS; r++)); do
    for tool in imgc skopeo; do
      if [ "$tool" = imgc ]; then cmd=$IMGC_AGAIN; else cmd=$SKOPEO_AGAIN; fi
      run_timed "$tool-again" "$cmd"
      check "$tool" "$REG_PORT"
      say "round $r/$RUNS $tool, every blob there: ${LAST}s"
    done
  done
  summarize imgc-again
  summarize skopeo-again
fi
reg_stop
summarize imgc-cold
summarize skopeo-cold
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_AFTER=$(busy)

# ---------------------------------------------------------------- table
row() { # NAME LABEL PEER UNIT(s or ms)
  local n=$1 label=$2 peer=$3 unit=$4 med min max pmed
  read -r med min max <"$T/times/$n"
  read -r pmed _ _ <"$T/times/$peer"
  awk -v label="$label" -v med="$med" -v min="$min" -v max="$max" -v pmed="$pmed" -v unit="$unit" \
      -v bytes="$PUSH_BYTES" -v self="$([ "$n" = "$peer" ] && echo 1 || echo 0)" 'BEGIN {
    if (unit == "ms") t = sprintf("%.0f ms (%.0f–%.0f)", med * 1000, min * 1000, max * 1000)
    else t = sprintf("%.2f s (%.2f–%.2f)", med, min, max)
    rate = unit == "ms" ? "–" : sprintf("%.0f", bytes / 1e6 / med)
    printf "| %s | %s | %s | %s |\n", label, t, rate, self ? "1 (peer)" : sprintf("%.2f×", med / pmed) }'
}
SKOPEO_SHOWN="\`skopeo copy ${SKOPEO_FLAGS[*]}\`"
TABLE=$(
  echo "| push of the layout | median (min–max) | MB/s | time vs skopeo |"
  echo "|---|---|---|---|"
  row imgc-cold "\`imgc push\`, empty registry" skopeo-cold s
  row skopeo-cold "$SKOPEO_SHOWN, empty registry (peer)" skopeo-cold s
  row imgc-again "\`imgc push\` again, every blob already there" skopeo-again ms
  row skopeo-again "$SKOPEO_SHOWN again, every blob already there (peer)" skopeo-again ms
)
VERDICT=$(awk -v a="$(cut -d' ' -f1 "$T/times/imgc-cold")" -v b="$(cut -d' ' -f1 "$T/times/skopeo-cold")" \
              -v c="$(cut -d' ' -f1 "$T/times/imgc-again")" -v d="$(cut -d' ' -f1 "$T/times/skopeo-again")" 'BEGIN {
  # Within 5%: less than the noise of this machine.
  printf "Into an empty registry imgc is %s (%.2f×); with every blob already there it is %s (%.2f×).",
    cmp(a / b), a / b, cmp(c / d), c / d }
  function cmp(r) { return r < 0.95 ? "faster than skopeo" : r > 1.05 ? "**slower** than skopeo" : "about as fast as skopeo" }')
# Noisy: a busy machine before our build, or other builds around the runs.
NOISY=""
awk -v l="${LOAD_START%% *}" -v n="$NPROC" 'BEGIN { exit !(l >= n / 2) }' && NOISY=yes
if [ "$BUSY_START" -gt 0 ] || [ "$BUSY_BEFORE" -gt 0 ] || [ "$BUSY_AFTER" -gt 0 ]; then NOISY=yes; fi
LOADS="load average when the script started / before the timed runs / after them: $LOAD_START / $LOAD_BEFORE / $LOAD_AFTER; other rustc/cargo processes then: $BUSY_START / $BUSY_BEFORE / $BUSY_AFTER"
if [ -n "$NOISY" ]; then
  NOISE="**The run was noisy:** other work shared the machine ($LOADS)."
else
  NOISE="The machine was otherwise quiet ($LOADS)."
fi
if [ "$TIMER" = hyperfine ]; then
  AGAIN_HOW="hyperfine (no shell, one warm-up run each, then $RUNS runs of imgc and $RUNS of skopeo)"
else
  AGAIN_HOW="own loop, round-robin, after one warm-up run each"
fi
if [ "${PRESERVED[skopeo]}" = yes ]; then
  SKOPEO_NOTE="skopeo pushed the same bytes: digests preserved (\`${SKOPEO_FLAGS[*]}\`), checked after every push."
else
  SKOPEO_NOTE="skopeo did **not** keep the layout's digests (flags \`${SKOPEO_FLAGS[*]}\`): ${PRESERVED[skopeo]}."
fi
PUSH_MB=$(awk -v b="$PUSH_BYTES" 'BEGIN { printf "%.1f", b / 1e6 }')
IN_MB=$(awk -v b="$TAR_BYTES" 'BEGIN { printf "%.1f", b / 1e6 }')
RANDOM_DESC=""
[ "$RANDOM_BYTES" -gt 0 ] && RANDOM_DESC=", and $RANDOM_SIZE of random bytes (\`/dev/urandom\`) in a layer of their own"
NOTES=$(
  echo "Image: one gzip layer of $TREE_DESC (a $IN_MB MB tar)$RANDOM_DESC; $NBLOBS blobs (index, manifest, config, layers of $LAYER_SIZES MB), $PUSH_MB MB in all (MB = 10^6 bytes; MB/s is these bytes over the wall time)."
  echo "Empty registry: every push went to a fresh docker-registry with an empty folder, plain HTTP on 127.0.0.1, started before and stopped after the timed command; own loop, $RUNS runs per tool, alternating (imgc, skopeo, skopeo, imgc, …)."
  echo "Every blob already there: both tools pushed again the tag \`bench:1\` to one registry that an untimed \`imgc push\` had filled; timer: $AGAIN_HOW."
  echo "Checks: after every push, the registry served the layout's index digest as \`bench:1\` (sha256 of \`skopeo inspect --raw\`) and every blob of the layout; imgc's own output digest matched too. $SKOPEO_NOTE"
  echo "The blobs were read once beforehand (warm page cache, caches not dropped); the registry stored into a temporary folder on the same disk."
  echo "$NOISE"
)

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
v() { "$@" 2>&1 | head -n1; }
VERSIONS="$(v "$IMGC" --version), $(v skopeo --version), $(v docker-registry --version | awk '{ print "docker-registry", $NF }')"
[ "$TIMER" = hyperfine ] && VERSIONS+=", $(v hyperfine --version)"
HEADER="Run $(date -u +'%Y-%m-%d %H:%M UTC') on $NPROC cores ($CPU), imgc commit \`$COMMIT\`."

REPORT=$(
  echo "$HEADER"
  echo
  echo "$TABLE"
  echo
  echo "$VERDICT"
  echo
  echo "- ${NOTES//$'\n'/$'\n'- }"
  echo "- Tools: $VERSIONS."
)
printf '%s\n' "$REPORT"

if [ "$WRITE_BOOK" = 1 ]; then
  printf '%s\n' "$REPORT" >"$T/report.md"
  bench_write_book "$T/report.md" "$T/book.md"
fi
