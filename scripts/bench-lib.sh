# What scripts/bench.sh, bench-cache.sh and bench-push.sh share; sourced,
# not run. The caller sets BENCH_MARKER (the book's block: `bench`,
# `bench-cache`, `bench-push`) before `bench_args "$@"`.

say() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "$0" "$*" >&2; exit 1; }

BOOK=book/src/benchmarks.md

# Parses --write-book, --keep and --help into WRITE_BOOK and KEEP, and checks
# that the book holds the block the results go into.
bench_args() {
  WRITE_BOOK=0
  KEEP=0
  local arg
  for arg in "$@"; do
    case $arg in
      --write-book) WRITE_BOOK=1 ;;
      --keep) KEEP=1 ;;
      -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument \`$arg\` (use --write-book, --keep)" ;;
    esac
  done
  if [ "$WRITE_BOOK" = 1 ]; then
    [ -f "$BOOK" ] || die "$BOOK not found"
    [ "$(grep -c "^<!-- $BENCH_MARKER:begin -->\$" "$BOOK")" = 1 ] \
      && [ "$(grep -c "^<!-- $BENCH_MARKER:end -->\$" "$BOOK")" = 1 ] \
      || die "$BOOK must hold the lines <!-- $BENCH_MARKER:begin --> and <!-- $BENCH_MARKER:end --> once each"
  fi
}

# RUNS from BENCH_RUNS, else $1.
bench_runs() {
  RUNS=${BENCH_RUNS:-$1}
  [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive number, not \`$RUNS\`"
}

# The median of per-round ratios: line i of the file $1 (a method's seconds
# in round i) over line i of $2 (its peer's, the same round). The machines
# this runs on drift in speed within minutes (one build's CPU time varied
# by 45% in a minute on a 2-core VM), and the rounds are run round-robin,
# so a method and its peer of one round saw the same machine: the median
# of those ratios is steadier than a ratio of two medians.
paired_ratio() { # FILE PEER-FILE
  paste -d' ' "$1" "$2" | awk '$2 > 0 { print $1 / $2 }' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    printf "%.4f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The commit measured (short), marked when src or the manifests differ.
bench_commit() {
  local c
  c=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    c="$c+uncommitted"
  fi
  printf '%s' "$c"
}

# Puts the report (the file $1) between the book's markers; $2 is a
# scratch file.
bench_write_book() {
  awk -v rep="$1" -v begin="<!-- $BENCH_MARKER:begin -->" -v end="<!-- $BENCH_MARKER:end -->" '
    $0 == begin { print; print ""; while ((getline l < rep) > 0) print l; print ""; skip = 1; next }
    $0 == end { skip = 0 }
    !skip { print }' "$BOOK" >"$2"
  cat "$2" >"$BOOK"
  say "wrote the results into $BOOK"
}

# Installs what is missing of the commands given as CMD:DEBIAN-PACKAGE (an
# empty package: cannot be installed here, e.g. `cargo:`; a CMD starting
# with `/` is a file that must be executable), with apt-get as root or
# through sudo.
bench_need() {
  local missing=() pair cmd pkg sudo=()
  for pair in "$@"; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if { [ "${cmd:0:1}" = / ] && [ ! -x "$cmd" ]; } || { [ "${cmd:0:1}" != / ] && ! command -v "$cmd" >/dev/null 2>&1; }; then
      [ -n "$pkg" ] || die "$cmd not found (install Rust: https://rustup.rs)"
      missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  say "installing missing benchmark tools: ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo; install by hand: ${missing[*]}"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed: ${missing[*]}"
}

# ---------------------------------------------------------------- registry
REG_PID=""
reg_stop() {
  if [ -n "$REG_PID" ]; then
    kill "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
    REG_PID=""
  fi
}
# A docker-registry on a free 127.0.0.1 port, plain HTTP, storing into DIR
# (made empty). Sets REG_PID and REG_PORT.
alive() { local st; st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
reg_start() { # DIR
  local dir=$1 port code deadline
  rm -rf "$dir"
  mkdir -p "$dir/storage"
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 40000))
    # Taken when something accepts a connection there.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
    cat >"$dir/config.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: imgc-bench
YML
    docker-registry serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
    REG_PID=$!
    deadline=$(($(date +%s) + 20))
    while alive "$REG_PID"; do
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/v2/" || true)
      if [ "$code" = 200 ]; then REG_PORT=$port; return 0; fi
      if [ "$(date +%s)" -ge "$deadline" ]; then
        reg_stop
        die "docker-registry not up after 20s on port $port; log: $(cat "$dir/registry.log")"
      fi
      sleep 0.05
    done
    # Exited: most likely the port was taken meanwhile. Try another one.
    wait "$REG_PID" 2>/dev/null || true
    REG_PID=""
  done
  die "could not start docker-registry on a free port; last log: $(cat "$dir/registry.log")"
}

