#!/usr/bin/env python3
"""Lists functions of src/ longer than 80 lines (the house rule: small rooms)
and exits 1 if there is any. Test files (`tests.rs`) are left out.
Usage: scripts/check-fn-length.py [FILES...]  (default: every src/**/*.rs)
"""
import os
import re
import sys

LIMIT = 80

def lens(path):
    lines=open(path).read().split('\n')
    out=[]
    i=0
    while i<len(lines):
        m=re.match(r'\s*(pub(\([^)]*\))?\s+)?(unsafe\s+)?fn\s+(\w+)',lines[i])
        if m and not lines[i].strip().startswith('//'):
            # find opening brace
            depth=0; started=False; j=i
            while j<len(lines):
                l=re.sub(r'"([^"\\]|\\.)*"','""',lines[j])
                l=re.sub(r"'([^'\\]|\\.)'","''",l)
                l=l.split('//')[0]
                for ch in l:
                    if ch=='{': depth+=1; started=True
                    elif ch=='}': depth-=1
                if started and depth<=0: break
                if not started and l.rstrip().endswith(';'): break
                j+=1
            if started: out.append((j-i+1,m.group(4),i+1))
            i+=1
        else: i+=1
    return out


def main():
    files = sys.argv[1:]
    if not files:
        src = os.path.join(os.path.dirname(__file__), "..", "src")
        for dirpath, _, names in os.walk(src):
            files += [os.path.join(dirpath, n) for n in names if n.endswith(".rs") and n != "tests.rs"]
    long = []
    for p in sorted(files):
        for n, name, ln in lens(p):
            if n > LIMIT:
                long.append(f"{n:4} lines  {os.path.normpath(p)}:{ln} {name}")
    for l in long:
        print(l)
    print(f"{len(long)} function(s) over {LIMIT} lines in {len(files)} files")
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main())
