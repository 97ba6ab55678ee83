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
