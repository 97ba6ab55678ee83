#!/usr/bin/env bash
# Makes ./base: a tiny two-platform (linux/amd64, linux/arm64/v8) OCI layout with
# umoci, tagged 1.0 (the index) and 1.0-amd64 / 1.0-arm64 (the manifests).
# The result is committed, so building the example needs neither umoci nor network.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/base"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
rm -rf "$out"; umoci init --layout "$out"
for arch in amd64 arm64; do
  r="$work/root-$arch"
  mkdir -p "$r/etc" "$r/tmp" "$r/root" "$r/app"
  printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$r/etc/group"
  printf 'NAME="imgc example base"\nARCH=%s\n' "$arch" > "$r/etc/os-release"
  chmod 1777 "$r/tmp"; chmod 0700 "$r/root"; chmod 0644 "$r"/etc/*
  find "$r" -exec touch -h -d @0 {} +
  umoci new --image "$out:1.0-$arch"
  umoci insert --no-history --image "$out:1.0-$arch" "$r" / >/dev/null
  umoci config --no-history --image "$out:1.0-$arch" --created 1970-01-01T00:00:00Z \
    --architecture "$arch" --os linux --config.env PATH=/usr/local/bin:/usr/bin:/bin \
    --config.cmd /bin/sh
done
umoci gc --layout "$out"
# An image index over both manifests, tagged 1.0.
python3 - "$out" <<'PY'
import hashlib, json, os, sys
out = sys.argv[1]
idx = json.load(open(os.path.join(out, "index.json")))
children = []
for d in idx["manifests"]:
    ref = d["annotations"]["org.opencontainers.image.ref.name"]
    arch = ref.split("-", 1)[1]
    plat = {"architecture": arch, "os": "linux"}
    if arch == "arm64":
        plat["variant"] = "v8"
    children.append({"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"], "platform": plat})
image_index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children}
raw = json.dumps(image_index, separators=(",", ":"), sort_keys=True).encode()
hexd = hashlib.sha256(raw).hexdigest()
open(os.path.join(out, "blobs", "sha256", hexd), "wb").write(raw)
idx["manifests"].append({"mediaType": image_index["mediaType"], "digest": "sha256:" + hexd, "size": len(raw),
                         "annotations": {"org.opencontainers.image.ref.name": "1.0"}})
open(os.path.join(out, "index.json"), "w").write(json.dumps(idx, separators=(",", ":"), sort_keys=True))
PY
