#!/usr/bin/env bash
# The benchmark: scripts/bench.sh [--write-book] [--keep]   (`just bench`)
#
# Not part of the test suite. Builds imgc in release mode, makes a ~200 MB
# input tree and times, in one run on one machine, imgc against its peers
# (umoci insert for gzip, the `tar | zstd -T0 -3` pipe for zstd), then checks
# imgc's peak memory on a 2 GiB file, and 100k tiny files against
# `tar | zstd | sha256sum` (time and peak memory). Prints a Markdown table on stdout;
# --write-book also puts it in book/src/benchmarks.md between the markers
# `<!-- bench:begin -->` and `<!-- bench:end -->`.
#
# The targets (from design/COMPRESSION-NOTES.md):
#   cold gzip build  <= 0.8 x `umoci insert` of the same tree
#   cold zstd build  <= 1.0 x `tar -cf - . | zstd -T0 -3`
#   peak RSS of a build holding one 2 GiB file <= 64 MB (issue 9; was < 100 MB)
#   100k tiny files <= 1.25 x `tar --sort=name | zstd -T0 -3 | sha256sum`,
#   peak RSS <= 64 MB
#
# Environment:
#   BENCH_TREE=DIR     time DIR's content instead of /usr/lib/python3* + /usr/share/doc
#   BENCH_RUNS=N       timed runs per method, the median is reported (default 5)
#   BENCH_TIMER=T      loop (default: own loop with `date +%s.%N`, the methods
#                      round-robin, ratios the median of the rounds' ratios; see
#                      paired_ratio in scripts/bench-lib.sh), or hyperfine (each
#                      method's runs in a row, ratios of the medians)
#   BENCH_MEM_SIZE=S   size of the memory-check file, as for `truncate -s` (default 2G; 0 skips)
#   BENCH_SMALL_FILES=N  tiny files of the small-files check (default 100000; 0 skips)
#
# Caches cannot be dropped here (no root on CI, shared machine): the tree is
# read once before timing, so every method reads it from the page cache.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

BENCH_MARKER=bench
source scripts/bench-lib.sh
bench_args "$@"
bench_runs 5
MEM_SIZE=${BENCH_MEM_SIZE:-2G}

# ---------------------------------------------------------------- tools
# `time` is a bash keyword: its file is checked.
bench_need umoci:umoci skopeo:skopeo pigz:pigz zstd:zstd gzip:gzip tar:tar openssl:openssl awk:mawk /usr/bin/time:time cargo:

TIMER=${BENCH_TIMER:-loop}
case $TIMER in
  hyperfine) command -v hyperfine >/dev/null 2>&1 || die "BENCH_TIMER=hyperfine but hyperfine is not installed (apt-get install hyperfine)" ;;
  loop) ;;
  *) die "BENCH_TIMER must be loop or hyperfine, not \`$TIMER\`" ;;
esac

# ---------------------------------------------------------------- imgc
say "cargo build --release --locked"
cargo build --release --locked
T=$(mktemp -d "${TMPDIR:-/tmp}/imgc-bench.XXXXXX")
cleanup() { if [ "$KEEP" = 1 ]; then say "kept $T"; else rm -rf "$T"; fi; }
trap cleanup EXIT
# A private copy: a rebuild by someone else during the run must not swap it.
cp target/release/imgc "$T/imgc"
IMGC=$T/imgc
# The spec decides; nothing from the caller's environment.
unset IMGC_THREADS SOURCE_DATE_EPOCH

COMMIT=$(bench_commit)

# ---------------------------------------------------------------- input
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
sync  # no write-back of the copy during the timed runs
# Warm the page cache (caches cannot be dropped): read every file once.
TAR_BYTES=$(tar -C "$T/ctx/tree" -cf - . | wc -c)
NFILES=$(find "$T/ctx/tree" | wc -l)
[ "$TAR_BYTES" -gt 0 ] || die "the input tree is empty"

spec() { # spec FILE COMPRESSION SRC DST
  cat >"$1" <<EOF
[image]
name = "bench.local/imgc/bench"
platforms = ["linux/amd64"]
epoch = 0
compression = "$2"

[[layers]]
name = "tree"
files = [{ src = "$3", dst = "$4" }]
EOF
}
spec "$T/ctx/gzip.toml" gzip 'tree/**' /
spec "$T/ctx/zstd.toml" zstd 'tree/**' /
CODEC_ID=$("$IMGC" plan "$T/ctx/gzip.toml" --format json | awk -F'"' '$2 == "compression" { print $4; exit }')

UMOCI_ROOTLESS=()
[ "$(id -u)" -eq 0 ] || UMOCI_ROOTLESS=(--rootless)

# ---------------------------------------------------------------- methods
# NAME | PREPARE (untimed, before each run) | COMMAND (timed). Commands run in
# `bash -o pipefail -c`. Sizes are counted with `wc -c` at the end of the
# pipes instead of `> /dev/null`. Every imgc build goes to a fresh folder,
# with --no-cache: these rows measure cold builds.
q() { printf '%q' "$1"; }
TARP="tar -C $(q "$T/ctx/tree") -cf - ."
imgc_build() { # SPEC OUT [ARGS...]
  local spec=$1 out=$2; shift 2
  printf '%s build %s --no-cache --output oci:%s -q %s >> %s' "$(q "$IMGC")" "$(q "$spec")" "$(q "$out")" "$*" "$(q "$out.digests")"
}
NAMES=() PREPS=() CMDS=()
add() { NAMES+=("$1"); PREPS+=("$2"); CMDS+=("$3"); }
add imgc-gzip   "rm -rf $(q "$T/o-gz")" "$(imgc_build "$T/ctx/gzip.toml" "$T/o-gz")"
add umoci       "rm -rf $(q "$T/umoci") && umoci init --layout $(q "$T/umoci") && umoci new --image $(q "$T/umoci"):bench" \
                "umoci insert ${UMOCI_ROOTLESS[*]} --image $(q "$T/umoci"):bench $(q "$T/ctx/tree") /"
add pigz        ":" "$TARP | pigz -6 | wc -c > $(q "$T/size.pigz")"
add gzip        ":" "$TARP | gzip -6 | wc -c > $(q "$T/size.gzip")"
add imgc-zstd   "rm -rf $(q "$T/o-zs")" "$(imgc_build "$T/ctx/zstd.toml" "$T/o-zs")"
add zstd        ":" "$TARP | zstd -q -T0 -3 -c | wc -c > $(q "$T/size.zstd")"
# The zstd pipe doing what an OCI layer needs besides: the digests of the
# tar stream (diff_id) and of the compressed blob. Not the target's peer.
# `openssl dgst` uses the CPU's SHA instructions, as imgc does; Debian 12's
# `sha256sum` does not (3-4x slower here).
add zstd-sha    ":" "$TARP | tee >(openssl dgst -sha256 > $(q "$T/sha.tar")) | zstd -q -T0 -3 -c | tee >(wc -c > $(q "$T/size.zstd-sha")) | openssl dgst -sha256 > $(q "$T/sha.zst")"
add imgc-gzip-j1 "rm -rf $(q "$T/o-gz1")" "$(imgc_build "$T/ctx/gzip.toml" "$T/o-gz1" -j 1)"
add imgc-gzip-j2 "rm -rf $(q "$T/o-gz2")" "$(imgc_build "$T/ctx/gzip.toml" "$T/o-gz2" -j 2)"
# Runs after imgc-gzip, whose layout it copies. --insecure-policy: a local
# oci-to-oci copy needs no signature policy (/etc/containers/policy.json).
add skopeo      "rm -rf $(q "$T/copy")" "skopeo --insecure-policy copy -q oci:$(q "$T/o-gz"):latest oci:$(q "$T/copy"):latest"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "input: $TAR_BYTES bytes of tar, $NFILES paths; $RUNS runs per method, timer: $TIMER; load average: $LOAD_BEFORE"
mkdir -p "$T/times"
if [ "$TIMER" = hyperfine ]; then
  for i in "${!NAMES[@]}"; do
    say "${NAMES[$i]}: ${CMDS[$i]}"
    hyperfine --style basic --shell 'bash --norc -o pipefail' --runs "$RUNS" \
      --command-name "${NAMES[$i]}" --prepare "${PREPS[$i]}" \
      --export-csv "$T/times/${NAMES[$i]}.csv" "${CMDS[$i]}" >&2
    # command,mean,stddev,median,user,system,min,max
    awk -F, 'NR == 2 { print $4, $7, $8 }' "$T/times/${NAMES[$i]}.csv" >"$T/times/${NAMES[$i]}"
  done
else
  # Round-robin: a burst of load from other users hits every method alike.
  for ((r = 1; r <= RUNS; r++)); do
    for i in "${!NAMES[@]}"; do
      bash --norc -o pipefail -c "${PREPS[$i]}" >/dev/null || die "${NAMES[$i]}: prepare failed: ${PREPS[$i]}"
      t0=$(date +%s.%N)
      bash --norc -o pipefail -c "${CMDS[$i]}" >/dev/null || die "${NAMES[$i]} failed: ${CMDS[$i]}"
      t1=$(date +%s.%N)
      s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
      echo "$s" >>"$T/times/${NAMES[$i]}.all"
      say "round $r/$RUNS ${NAMES[$i]}: ${s}s"
    done
  done
  for n in "${NAMES[@]}"; do
    sort -g "$T/times/$n.all" | awk '{ v[NR] = $1 } END {
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      print m, v[1], v[NR] }' >"$T/times/$n"
  done
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- sizes
largest_blob() { find "$1/blobs" -type f -printf '%s\n' | sort -n | tail -n1; }
declare -A SIZE
SIZE[imgc-gzip]=$(largest_blob "$T/o-gz")
SIZE[imgc-gzip-j1]=$(largest_blob "$T/o-gz1")
SIZE[imgc-gzip-j2]=$(largest_blob "$T/o-gz2")
SIZE[imgc-zstd]=$(largest_blob "$T/o-zs")
SIZE[umoci]=$(largest_blob "$T/umoci")
SIZE[skopeo]=$(largest_blob "$T/copy")
for n in pigz gzip zstd zstd-sha; do SIZE[$n]=$(tr -d ' ' <"$T/size.$n"); done
# Every gzip build, at any -j, in every run: one index digest.
GZ_DIGESTS=$(cat "$T/o-gz.digests" "$T/o-gz1.digests" "$T/o-gz2.digests" | sort -u | wc -l)
ZS_DIGESTS=$(sort -u "$T/o-zs.digests" | wc -l)
[ "$GZ_DIGESTS" = 1 ] && SAME_GZ=yes || SAME_GZ="NO ($GZ_DIGESTS digests)"
[ "$ZS_DIGESTS" = 1 ] && SAME_ZS=yes || SAME_ZS="NO ($ZS_DIGESTS digests)"

# ---------------------------------------------------------------- small files
# 100k tiny files (10 to 300 random bytes each, in 100 folders): a cold
# zstd build (empty cache) against `tar --sort=name | zstd -T0 -3 |
# sha256sum`, round-robin, with each run's peak RSS.
SMALL_N=${BENCH_SMALL_FILES:-100000}
SMALL_ROWS=""
if [ "$SMALL_N" != 0 ]; then
  say "small files: $SMALL_N"
  mkdir -p "$T/small/files"
  awk -v n="$SMALL_N" -v dir="$T/small/files" 'BEGIN {
    srand(1)
    for (i = 0; i < n; i++) {
      d = sprintf("%s/d%03d", dir, int(i / 1000))
      if (i % 1000 == 0) system("mkdir -p " d)
      f = sprintf("%s/f%04d.txt", d, i % 1000)
      len = 10 + int(rand() * 290); s = ""
      for (j = 0; j < len; j++) s = s sprintf("%c", 33 + int(rand() * 90))
      printf "%s", s > f; close(f)
    }
  }'
  spec "$T/small/image.toml" zstd 'files/**' /data/
  SMALL_TAR=$(tar -C "$T/small" --sort=name -cf - files | wc -c)
  small_imgc() { rm -rf "$T/small/out" "$T/small/cache"
    IMGC_CACHE_DIR=$T/small/cache /usr/bin/time -f '%e %M' -o "$T/small/t" "$IMGC" build "$T/small/image.toml" --output "oci:$T/small/out" -q >/dev/null; }
  small_pipe() { /usr/bin/time -f '%e %M' -o "$T/small/t" bash -c "tar -C $(printf %q "$T/small") --sort=name -cf - files | zstd -T0 -3 -q | sha256sum >/dev/null"; }
  for ((r = 1; r <= RUNS; r++)); do
    for m in imgc pipe; do
      "small_$m" || die "small files: $m failed"
      cat "$T/small/t" >>"$T/small/$m.all"
      say "round $r/$RUNS small files, $m: $(cat "$T/small/t")"
    done
  done
  # Median wall time and the largest peak RSS of the runs.
  med() { sort -g -k1,1 "$1" | awk '{ w[NR] = $1; if ($2 > m) m = $2 } END {
    print ((NR % 2) ? w[(NR + 1) / 2] : (w[NR / 2] + w[NR / 2 + 1]) / 2), m }'; }
  read -r SI_W SI_M < <(med "$T/small/imgc.all")
  read -r SP_W SP_M < <(med "$T/small/pipe.all")
  cut -d' ' -f1 "$T/small/imgc.all" >"$T/small/imgc.s"
  cut -d' ' -f1 "$T/small/pipe.all" >"$T/small/pipe.s"
  SMALL_R=$(paired_ratio "$T/small/imgc.s" "$T/small/pipe.s")
  SMALL_ROWS=$(awk -v iw="$SI_W" -v im="$SI_M" -v pw="$SP_W" -v pm="$SP_M" -v n="$SMALL_N" -v r="$SMALL_R" 'BEGIN {
    printf "| imgc build, zstd, %d tiny files, empty cache | %.2f | %.2f× | %.1f | ≤ 1.25×: %s; ≤ 64 MB: %s |\n", n, iw, r, im / 1024, (r <= 1.25 ? "**holds**" : "**missed**"), (im / 1024 <= 64 ? "**holds**" : "**missed**")
    printf "| `tar --sort=name \\| zstd -T0 -3 \\| sha256sum` (peer) | %.2f | 1 (peer) | %.1f | – |\n", pw, pm / 1024 }')
  rm -rf "$T/small"
fi

# ---------------------------------------------------------------- memory
MEM_ROWS=""
if [ "$MEM_SIZE" != 0 ]; then
  say "memory check: one $MEM_SIZE file"
  mkdir -p "$T/mem"
  # Real content (the input tar, repeated), so compression does real work.
  eval "$TARP" >"$T/tree.tar"
  mem_bytes=$(numfmt --from=iec "$MEM_SIZE")
  copies=$(((mem_bytes + TAR_BYTES - 1) / TAR_BYTES))
  for ((i = 0; i < copies; i++)); do cat "$T/tree.tar"; done >"$T/mem/big.bin"
  truncate -s "$mem_bytes" "$T/mem/big.bin"
  rm -f "$T/tree.tar"
  # Free the timed outputs' disk space (skopeo copy was the last reader).
  rm -rf "$T/o-gz" "$T/o-gz1" "$T/o-gz2" "$T/o-zs" "$T/umoci" "$T/copy"
  tar -C "$T/mem" -cf - big.bin | wc -c >/dev/null  # warm
  for c in gzip zstd; do
    spec "$T/mem/$c.toml" "$c" big.bin /big.bin
    /usr/bin/time -v "$IMGC" build "$T/mem/$c.toml" --no-cache --output "oci:$T/mem/out-$c" -q >/dev/null 2>"$T/mem/time-$c" \
      || { cat "$T/mem/time-$c" >&2; die "memory check: imgc build ($c) failed"; }
    rss_kb=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$T/mem/time-$c")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0
      for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$T/mem/time-$c")
    out=$(largest_blob "$T/mem/out-$c")
    MEM_ROWS+=$(awk -v c="$c" -v kb="$rss_kb" -v w="$wall" -v in_="$mem_bytes" -v out="$out" -v sz="$MEM_SIZE" 'BEGIN {
      mb = kb / 1024
      printf "| imgc build, %s, one %s file | %.1f | %.2f | %.0f | %.1f | ≤ 64 MB: %s |\n", c, sz, mb, w, in_ / 1e6 / w, out / 1e6, (mb <= 64 ? "**holds**" : "**missed**") }')
    MEM_ROWS+=$'\n'
    rm -rf "$T/mem/out-$c"
  done
fi

# ---------------------------------------------------------------- table
row() { # NAME LABEL PEER TARGET(ratio limit, or -)
  local n=$1 label=$2 peer=$3 limit=$4
  read -r med min max <"$T/times/$n"
  local pmed ratio
  read -r pmed _ _ <"$T/times/$peer"
  if [ -f "$T/times/$n.all" ]; then
    ratio=$(paired_ratio "$T/times/$n.all" "$T/times/$peer.all")
  else
    ratio=$(awk -v a="$med" -v b="$pmed" 'BEGIN { print a / b }')
  fi
  awk -v label="$label" -v med="$med" -v min="$min" -v max="$max" -v ratio="$ratio" \
      -v in_="$TAR_BYTES" -v out="${SIZE[$n]}" -v pout="${SIZE[$peer]}" -v limit="$limit" -v self=$([ "$n" = "$peer" ] && echo 1 || echo 0) 'BEGIN {
    target = "–"
    if (limit != "-") target = sprintf("≤ %.1f×: %s", limit, ratio <= limit ? "**holds**" : "**missed**")
    printf "| %s | %.2f (%.2f–%.2f) | %.0f | %.1f | %s | %s | %s |\n", label, med, min, max, in_ / 1e6 / med, out / 1e6,
      self ? "1 (peer)" : sprintf("%.2f×", ratio), self ? "1 (peer)" : sprintf("%.3f", out / pout), target }'
}
NPROC=$(nproc)
TABLE=$(
  echo "| method | seconds: median (min–max) | MB/s | output MB | time vs peer | size vs peer | target |"
  echo "|---|---|---|---|---|---|---|"
  row imgc-gzip "imgc build, gzip, cold (default -j = $NPROC)" umoci 0.8
  row umoci "\`umoci insert\` into a new image (gzip peer)" umoci -
  row pigz "\`tar \| pigz -6\`" umoci -
  row gzip "\`tar \| gzip -6\`" umoci -
  row imgc-gzip-j1 "imgc build, gzip, cold, -j 1" umoci -
  row imgc-gzip-j2 "imgc build, gzip, cold, -j 2" umoci -
  row imgc-zstd "imgc build, zstd, cold (default -j = $NPROC)" zstd 1.0
  row zstd "\`tar \| zstd -T0 -3\` (zstd peer)" zstd -
  row zstd-sha "\`tar \| tee >(openssl dgst -sha256) \| zstd -T0 -3 \| openssl dgst -sha256\` (the pipe with a layer's two digests; reference)" zstd -
  row skopeo "\`skopeo copy oci:A oci:B\` of imgc's gzip layout (reference)" umoci -
)
IN_MB=$(awk -v b="$TAR_BYTES" 'BEGIN { printf "%.1f", b / 1e6 }')
NOTES=$(
  echo "Input: $TREE_DESC, $NFILES paths, a $IN_MB MB tar (MB = 10^6 bytes; MB/s is input tar bytes over wall time)."
  echo "Wall time of $RUNS runs per method, timer: $TIMER; the tree was read once beforehand (warm page cache, caches not dropped)."
  [ "$TIMER" = loop ] && echo "Methods run round-robin; \"time vs peer\" (and the small files' ratio) is the median of the rounds' ratios (a method and its peer of one round saw the same machine state), not the ratio of the medians shown."
  echo "Output MB is the layer blob (imgc, umoci, skopeo) or the compressed stream (CLIs). Peers: umoci insert for gzip rows, \`tar | zstd\` for zstd rows."
  echo "Same index digest in every gzip build (-j default, 1, 2; all runs): $SAME_GZ; in every zstd build: $SAME_ZS."
  if [ -f "$T/times/imgc-zstd.all" ]; then
    echo "imgc's zstd build against the zstd pipe that also makes a layer's two digests (diff_id and blob digest, as imgc does; the target's peer makes none): $(paired_ratio "$T/times/imgc-zstd.all" "$T/times/zstd-sha.all" | awk '{ printf "%.2f", $1 }')× (median of the rounds' ratios)."
  fi
  echo "Load average before/after: $LOAD_BEFORE / $LOAD_AFTER."
)
MEM_TABLE=""
if [ -n "$MEM_ROWS" ]; then
  MEM_TABLE=$(
    echo "| memory check | max RSS MB | seconds | MB/s | output MB | target |"
    echo "|---|---|---|---|---|---|"
    printf '%s' "$MEM_ROWS"
  )
fi

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
v() { "$@" 2>&1 | head -n1; }
VERSIONS="$(v "$IMGC" --version) (codec \`$CODEC_ID\`), $(v umoci --version), $(v skopeo --version), $(v pigz --version), $(v gzip --version), $(v zstd --version | sed 's/^\*\*\* //; s/ \*\*\*$//; s/, by .*//'), $(v tar --version)"
[ "$TIMER" = hyperfine ] && VERSIONS+=", $(v hyperfine --version)"
HEADER="Run $(date -u +'%Y-%m-%d %H:%M UTC') on $NPROC cores ($CPU), imgc commit \`$COMMIT\`."

REPORT=$(
  echo "$HEADER"
  echo
  echo "$TABLE"
  echo
  if [ -n "$MEM_TABLE" ]; then echo "$MEM_TABLE"; echo; fi
  if [ -n "$SMALL_ROWS" ]; then
    echo "| small files | seconds (median) | time vs peer | max RSS MB | target |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "$SMALL_ROWS"
    echo
  fi
  echo "$NOTES" | sed 's/^/- /'
  echo "- Tools: $VERSIONS."
)
printf '%s\n' "$REPORT"

if [ "$WRITE_BOOK" = 1 ]; then
  printf '%s\n' "$REPORT" >"$T/report.md"
  bench_write_book "$T/report.md" "$T/book.md"
fi
