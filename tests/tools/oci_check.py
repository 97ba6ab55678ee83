#!/usr/bin/env python3
"""oci_check.py - an independent checker and reader of OCI image layouts.

Written for imgc's tests, from the OCI image and layout specifications, and
sharing no code with imgc: a bug in imgc's writer cannot hide behind the same
bug in the reader. Needs Python 3 (stdlib); `jsonschema` (Debian's
python3-jsonschema) for schema validation; the `zstd` command for zstd layers.

Commands (exit 0 on success, 1 on a check failure, 2 on a usage error):

  verify LAYOUT [--schemas DIR] [--require-schemas] [--strict]
      Checks `oci-layout` and `index.json`, then walks every descriptor
      (index -> nested indexes -> manifests -> config + layers): each blob's
      size and digest, media types (descriptor vs document), each JSON
      document against the OCI JSON schemas, platform vs config, rootfs
      diff_ids (count and sha256 of each decompressed layer), and that each
      layer is a well-formed tar stream. Reports every error found.
      --strict also fails on unreferenced blobs, on index entries without a
      platform, and on documents without a mediaType field.

  list LAYOUT [--ref TAG] [--platform OS/ARCH[/VARIANT]]
      The flattened filesystem of one image (layers applied in order,
      whiteouts honoured), read with Python's tarfile, as a JSON array sorted
      by path: {path ("/etc/passwd", the root is "/"), type (file, dir,
      symlink, hardlink, char, block, fifo), mode (permission and special
      bits), uid, gid, mtime, size, linkname, sha256 (files and hardlinks)}.

  config LAYOUT [--ref TAG] [--platform P]     the image's config JSON
  manifest LAYOUT [--ref TAG] [--platform P]   the image's manifest JSON

  layers LAYOUT [--ref TAG] [--platform P]
      Each layer of the image, read by a raw tar header parser written here
      (not tarfile), as a JSON array: {digest, mediaType, size, diff_id,
      end_zero_blocks, trailing_bytes, pax_global, errors, members: [{path,
      name, prefix, type, typeflag, mode (the raw header value), uid, gid,
      uname, gname, mtime, size, linkname, devmajor, devminor, magic (ustar,
      gnu or v7), pax (the PAX records that apply to the entry), gnu_long}]}.
      Paths are as stored in the tar (no normalisation).

The image is chosen by --ref (the org.opencontainers.image.ref.name annotation
in index.json; optional when every entry points to the same digest) and
--platform (required when an index holds several platforms).
"""

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zlib

DEFAULT_SCHEMAS = "/usr/share/gocode/src/github.com/opencontainers/image-spec/schema"

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
CONFIG_TYPES = {OCI_CONFIG, DOCKER_CONFIG}
# The index / manifest type a manifest of each family must use.
FAMILY = {OCI_INDEX: "oci", OCI_MANIFEST: "oci", DOCKER_LIST: "docker", DOCKER_MANIFEST: "docker"}

# Layer media type -> compression.
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
# RFC 3339 date-time (what the config's "created" must be).
RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
CHUNK = 1 << 20


class UsageError(Exception):
    pass


class CheckError(Exception):
    pass


# ---------------------------------------------------------------- schemas

def load_schemas(schema_dir):
    """The OCI schemas with every "$ref" inlined, so the result is
    self-contained and no base-URI resolution ("id") is needed. Returns
    {kind: schema} for kind in layout, index, manifest, config."""
    docs = {}
    for fn in sorted(os.listdir(schema_dir)):
        if fn.endswith(".json"):
            with open(os.path.join(schema_dir, fn), "rb") as f:
                docs[fn] = json.load(f)

    def pointer(doc, frag):
        node = doc
        for part in [p for p in frag.split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def inline(doc_name, node, seen):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                target_file, _, frag = ref.partition("#")
                target_doc = os.path.basename(target_file) if target_file else doc_name
                key = (target_doc, frag)
                if key in seen:
                    raise CheckError("schema $ref cycle at %s#%s" % key)
                if target_doc not in docs:
                    raise CheckError("schema %s refers to missing %s" % (doc_name, target_doc))
                return inline(target_doc, pointer(docs[target_doc], frag), seen | {key})
            out = {}
            for k, v in node.items():
                # "id" and "$schema" only set base URIs; drop them once refs are inlined.
                if k in ("id", "$schema") and isinstance(v, str):
                    continue
                out[k] = inline(doc_name, v, seen)
            return out
        if isinstance(node, list):
            return [inline(doc_name, v, seen) for v in node]
        return node

    files = {
        "layout": "image-layout-schema.json",
        "index": "image-index-schema.json",
        "manifest": "image-manifest-schema.json",
        "config": "config-schema.json",
    }
    out = {}
    for kind, fn in files.items():
        if fn not in docs:
            raise CheckError("schema file %s missing in %s" % (fn, schema_dir))
        out[kind] = inline(fn, docs[fn], frozenset())
    return out


class Schemas:
    def __init__(self, schema_dir, require):
        self.validators = None
        self.problem = None
        if not os.path.isdir(schema_dir):
            self.problem = "OCI schema folder %s not found" % schema_dir
        else:
            try:
                import jsonschema  # noqa: F401
                from jsonschema import Draft4Validator
            except ImportError:
                self.problem = "python module jsonschema not installed (%s)" % sys.executable
            else:
                self.validators = {k: Draft4Validator(s) for k, s in load_schemas(schema_dir).items()}
        self.required = require

    def validate(self, kind, doc):
        """Error strings (empty when valid or when validation is off)."""
        if self.validators is None:
            return []
        errs = []
        for e in sorted(self.validators[kind].iter_errors(doc), key=lambda e: list(e.absolute_path)):
            path = "/".join(str(p) for p in e.absolute_path) or "(document)"
            errs.append("%s schema: %s: %s" % (kind, path, e.message))
        return errs


# ---------------------------------------------------------------- layout access

class Layout:
    def __init__(self, root):
        self.root = root
        if not os.path.isdir(root):
            raise UsageError("%s is not a folder" % root)

    def blob_path(self, digest):
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise CheckError("invalid digest %r" % (digest,))
        alg, hexd = digest.split(":", 1)
        return os.path.join(self.root, "blobs", alg, hexd)

    def read_json_file(self, name):
        path = os.path.join(self.root, name)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise CheckError("cannot read %s: %s" % (name, e.strerror))
        try:
            return json.loads(raw)
        except ValueError as e:
            raise CheckError("%s is not JSON: %s" % (name, e))

    def read_blob(self, desc, limit=16 << 20):
        """The bytes of a small blob, checked against the descriptor."""
        digest, size = desc.get("digest"), desc.get("size")
        path = self.blob_path(digest)
        if not os.path.isfile(path):
            raise CheckError("blob %s is missing" % digest)
        if os.path.getsize(path) > limit:
            raise CheckError("blob %s is larger than %d bytes" % (digest, limit))
        with open(path, "rb") as f:
            raw = f.read()
        if len(raw) != size:
            raise CheckError("blob %s has %d bytes, descriptor says %r" % (digest, len(raw), size))
        alg, hexd = digest.split(":", 1)
        if hashlib.new(alg, raw).hexdigest() != hexd:
            raise CheckError("blob %s does not match its digest (sha: %s)" % (
                digest, hashlib.new(alg, raw).hexdigest()))
        return raw

    def read_json_blob(self, desc):
        raw = self.read_blob(desc)
        try:
            return json.loads(raw)
        except ValueError as e:
            raise CheckError("blob %s is not JSON: %s" % (desc.get("digest"), e))


def open_uncompressed(path, compression):
    """(file object of the uncompressed bytes, closer returning an error or None)."""
    if compression == "none":
        f = open(path, "rb")
        return f, lambda: (f.close(), None)[1]
    if compression == "gzip":
        f = gzip.open(path, "rb")
        return f, lambda: (f.close(), None)[1]
    if compression == "zstd":
        try:
            p = subprocess.Popen(["zstd", "-dcq", "--no-progress", path],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise CheckError("the zstd command is needed to read zstd layers")

        def close():
            # A tar reader stops at the end-of-archive blocks; zstd may still
            # be writing the padding after them. Read it out, or zstd dies of
            # a broken pipe and the layer looks corrupt when it is not.
            while p.stdout.read(CHUNK):
                pass
            p.stdout.close()
            err = p.stderr.read().decode(errors="replace").strip()
            p.stderr.close()
            if p.wait() != 0:
                return "zstd -d failed: %s" % err
            return None
        return p.stdout, close
    raise CheckError("unknown compression %s" % compression)


def layer_diff_id(path, compression):
    """sha256 of the uncompressed layer, as "sha256:<hex>"."""
    f, close = open_uncompressed(path, compression)
    h = hashlib.sha256()
    try:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        close()
        raise CheckError("cannot decompress (%s): %s" % (compression, e))
    err = close()
    if err:
        raise CheckError(err)
    return "sha256:" + h.hexdigest()


def file_digest(path, alg):
    h = hashlib.new(alg)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- raw tar parser

TYPE_NAMES = {
    "0": "file", "\0": "file", "7": "file", "1": "hardlink", "2": "symlink",
    "3": "char", "4": "block", "5": "dir", "6": "fifo",
}


def _cstr(b):
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _num(b):
    """A numeric header field: octal text, or base-256 when the high bit is set."""
    if b and b[0] & 0x80:
        v = b[0] & 0x7F
        if b[0] & 0x40:  # negative
            v -= 0x80
        for c in b[1:]:
            v = (v << 8) | c
        return v
    s = b.split(b"\0", 1)[0].strip(b" ")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise CheckError("bad numeric header field %r" % b)


def _pax_records(data):
    out = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        rec = data[sp + 1:pos + length]
        if not rec.endswith(b"\n") or b"=" not in rec:
            raise CheckError("malformed PAX record %r" % data[pos:pos + length])
        k, v = rec[:-1].split(b"=", 1)
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _read_exact(f, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def scan_tar(f):
    """Parses a tar stream header by header. Returns a dict with members,
    end_zero_blocks, trailing_bytes, pax_global and errors."""
    members, errors = [], []
    pax_next, pax_global = {}, {}
    gnu_name = gnu_link = None
    end_zero = trailing = 0
    while True:
        hdr = _read_exact(f, 512)
        if not hdr:
            break  # end_zero_blocks stays 0
        if len(hdr) < 512:
            errors.append("truncated header (%d bytes)" % len(hdr))
            break
        if hdr == b"\0" * 512:
            end_zero = 1
            while True:
                blk = _read_exact(f, 512)
                if not blk:
                    break
                if blk == b"\0" * 512 and trailing == 0:
                    end_zero += 1
                else:
                    trailing += len(blk)
                    rest = f.read(CHUNK)
                    while rest:
                        trailing += len(rest)
                        rest = f.read(CHUNK)
                    break
            break
        stored = _num(hdr[148:156])
        computed = sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])
        if stored != computed:
            errors.append("bad header checksum at member %d" % len(members))
        typeflag = chr(hdr[156])
        size = _num(hdr[124:136])
        padded = (size + 511) // 512 * 512
        if typeflag in ("x", "g", "L", "K"):
            data = _read_exact(f, padded)
            if len(data) < padded:
                errors.append("truncated extended header")
                break
            data = data[:size]
            if typeflag == "x":
                pax_next.update(_pax_records(data))
            elif typeflag == "g":
                pax_global.update(_pax_records(data))
            elif typeflag == "L":
                gnu_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                gnu_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        magic_raw = hdr[257:265]
        if magic_raw == b"ustar\x0000":
            magic = "ustar"
        elif magic_raw == b"ustar  \0":
            magic = "gnu"
        else:
            magic = "v7"
        name = _cstr(hdr[0:100])
        prefix = _cstr(hdr[345:500]) if magic == "ustar" else ""
        path = (prefix + "/" + name) if prefix else name
        linkname = _cstr(hdr[157:257])
        gnu_long = gnu_name is not None or gnu_link is not None
        if gnu_name is not None:
            path = gnu_name
        if gnu_link is not None:
            linkname = gnu_link
        m = {
            "path": path,
            "name": name,
            "prefix": prefix,
            "type": TYPE_NAMES.get(typeflag, "other"),
            "typeflag": typeflag if typeflag != "\0" else "0",
            "mode": _num(hdr[100:108]),
            "uid": _num(hdr[108:116]),
            "gid": _num(hdr[116:124]),
            "size": size,
            "mtime": _num(hdr[136:148]),
            "linkname": linkname,
            "uname": _cstr(hdr[265:297]) if magic != "v7" else "",
            "gname": _cstr(hdr[297:329]) if magic != "v7" else "",
            "devmajor": _num(hdr[329:337]) if magic != "v7" else 0,
            "devminor": _num(hdr[337:345]) if magic != "v7" else 0,
            "magic": magic,
            "pax": dict(pax_next),
            "gnu_long": gnu_long,
        }
        # PAX records override the header fields they name.
        for key, field, conv in (("path", "path", str), ("linkpath", "linkname", str),
                                 ("size", "size", int), ("uid", "uid", int), ("gid", "gid", int),
                                 ("uname", "uname", str), ("gname", "gname", str),
                                 ("mtime", "mtime", float)):
            v = pax_next.get(key, pax_global.get(key))
            if v is not None:
                try:
                    v = conv(v)
                except ValueError:
                    errors.append("bad PAX %s=%r" % (key, v))
                    continue
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                m[field] = v
        pax_next, gnu_name, gnu_link = {}, None, None
        members.append(m)
        # Only regular files (and unknown types) carry data, as tarfile reads it.
        body = m["size"] if m["type"] in ("file", "other") else 0
        if body == 0 and m["size"] != 0:
            errors.append("%s entry %s has a non-zero size %d" % (m["type"], path, m["size"]))
        skip = (body + 511) // 512 * 512
        got = _read_exact(f, skip)
        if len(got) < skip:
            errors.append("truncated data of %s" % path)
            break
    return {"members": members, "end_zero_blocks": end_zero, "trailing_bytes": trailing,
            "pax_global": pax_global, "errors": errors}


# ---------------------------------------------------------------- verify

def platform_str(p):
    if not isinstance(p, dict):
        return "?"
    s = "%s/%s" % (p.get("os"), p.get("architecture"))
    if p.get("variant"):
        s += "/" + p["variant"]
    return s


class Verifier:
    def __init__(self, layout, schemas, strict):
        self.layout = layout
        self.schemas = schemas
        self.strict = strict
        self.errors = []
        self.warnings = []
        self.referenced = set()
        self.seen = {}  # digest -> media type it was walked as
        self.counts = {"index": 0, "manifest": 0, "config": 0, "layer": 0}
        self.configs = {}  # manifest digest -> its config

    def err(self, where, msg):
        self.errors.append("%s: %s" % (where, msg))

    def warn(self, where, msg):
        self.warnings.append("%s: %s" % (where, msg))

    def check_descriptor(self, d, where):
        """True when the descriptor's fields are usable."""
        if not isinstance(d, dict):
            self.err(where, "descriptor is not an object")
            return False
        ok = True
        if not isinstance(d.get("mediaType"), str):
            self.err(where, "descriptor has no mediaType")
            ok = False
        dg = d.get("digest")
        if not isinstance(dg, str) or not DIGEST_RE.match(dg):
            self.err(where, "invalid digest %r" % (dg,))
            ok = False
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            self.err(where, "invalid size %r" % (size,))
            ok = False
        if ok:
            self.referenced.add(dg)
        return ok

    def schema(self, kind, doc, where):
        for e in self.schemas.validate(kind, doc):
            self.err(where, e)

    def run(self):
        where = "oci-layout"
        try:
            lay = self.layout.read_json_file("oci-layout")
            self.schema("layout", lay, where)
            if not isinstance(lay, dict) or lay.get("imageLayoutVersion") != OCI_LAYOUT_VERSION:
                self.err(where, "imageLayoutVersion is not %s" % OCI_LAYOUT_VERSION)
        except CheckError as e:
            self.err(where, str(e))
        where = "index.json"
        try:
            idx = self.layout.read_json_file("index.json")
        except CheckError as e:
            self.err(where, str(e))
            return
        self.check_index_doc(idx, where, None, top=True)
        self.check_unreferenced()

    def check_index_doc(self, idx, where, desc_mt, top=False):
        self.counts["index"] += 1
        if not isinstance(idx, dict):
            self.err(where, "not a JSON object")
            return
        self.schema("index", idx, where)
        if idx.get("schemaVersion") != 2:
            self.err(where, "schemaVersion is %r, not 2" % (idx.get("schemaVersion"),))
        mt = idx.get("mediaType")
        if mt is None:
            if self.strict and not top:
                self.err(where, "no mediaType field")
        elif desc_mt is not None and mt != desc_mt:
            self.err(where, "mediaType %s differs from the descriptor's %s" % (mt, desc_mt))
        elif desc_mt is None and mt not in INDEX_TYPES:
            self.err(where, "mediaType %s is not an index type" % mt)
        if "config" in idx or "layers" in idx:
            self.err(where, "an index must not have config or layers (ambiguous document)")
        manifests = idx.get("manifests")
        if not isinstance(manifests, list):
            self.err(where, "manifests is not a list")
            return
        for i, d in enumerate(manifests):
            w = "%s manifests[%d]" % (where, i)
            if not self.check_descriptor(d, w):
                continue
            w += " (%s)" % d["digest"][:19]
            if not top and self.strict and d["mediaType"] in MANIFEST_TYPES and "platform" not in d:
                self.err(w, "manifest descriptor in an index has no platform")
            self.walk(d, w)

    def walk(self, d, where):
        mt, digest = d["mediaType"], d["digest"]
        if mt not in INDEX_TYPES and mt not in MANIFEST_TYPES:
            self.err(where, "unexpected media type %s for an index entry" % mt)
            return
        prev = self.seen.get(digest)
        if prev is not None:
            if prev != mt:
                self.err(where, "blob %s used as %s and as %s" % (digest, prev, mt))
            else:
                # Same document again: its size and platform still need to agree.
                try:
                    self.layout.read_blob(d)
                except CheckError as e:
                    self.err(where, str(e))
                if mt in MANIFEST_TYPES and "platform" in d:
                    self.check_platform_again(d, where)
            return
        self.seen[digest] = mt
        try:
            doc = self.layout.read_json_blob(d)
        except CheckError as e:
            self.err(where, str(e))
            return
        if mt in INDEX_TYPES:
            self.check_index_doc(doc, where, mt)
        else:
            self.check_manifest(doc, d, where)

    def check_platform_again(self, d, where):
        cfg = self.configs.get(d["digest"])
        if cfg is not None:
            self.compare_platform(d["platform"], cfg, where)

    def compare_platform(self, p, cfg, where):
        if not isinstance(p, dict):
            self.err(where, "platform is not an object")
            return
        for key in ("os", "architecture"):
            if p.get(key) != cfg.get(key):
                self.err(where, "platform %s %r differs from the config's %r" % (key, p.get(key), cfg.get(key)))
        for key in ("variant", "os.version"):
            if key in p and key in cfg and p[key] != cfg[key]:
                self.err(where, "platform %s %r differs from the config's %r" % (key, p[key], cfg[key]))

    def check_manifest(self, man, d, where):
        self.counts["manifest"] += 1
        mt = d["mediaType"]
        if not isinstance(man, dict):
            self.err(where, "manifest is not a JSON object")
            return
        if FAMILY[mt] == "oci":
            self.schema("manifest", man, where)
        if man.get("schemaVersion") != 2:
            self.err(where, "schemaVersion is %r, not 2" % (man.get("schemaVersion"),))
        if "manifests" in man:
            self.err(where, "a manifest must not have manifests (ambiguous document)")
        if "mediaType" in man:
            if man["mediaType"] != mt:
                self.err(where, "mediaType %s differs from the descriptor's %s" % (man["mediaType"], mt))
        elif self.strict or FAMILY[mt] == "docker":
            self.err(where, "no mediaType field")
        cdesc = man.get("config")
        cfg = None
        if self.check_descriptor(cdesc, where + " config"):
            cw = where + " config (%s)" % cdesc["digest"][:19]
            cmt = cdesc["mediaType"]
            want = OCI_CONFIG if FAMILY[mt] == "oci" else DOCKER_CONFIG
            if cmt in CONFIG_TYPES and cmt != want:
                self.err(cw, "config media type %s in a %s manifest" % (cmt, mt))
            if cmt in CONFIG_TYPES:
                try:
                    cfg = self.layout.read_json_blob(cdesc)
                except CheckError as e:
                    self.err(cw, str(e))
                if cfg is not None:
                    self.check_config(cfg, cw, cmt)
            else:
                # An artifact: the config is opaque, only the blob is checked.
                try:
                    self.layout.read_blob(cdesc, limit=1 << 40)
                except CheckError as e:
                    self.err(cw, str(e))
        if isinstance(cfg, dict):
            self.configs[d["digest"]] = cfg
            if "platform" in d:
                self.compare_platform(d["platform"], cfg, where)
        layers = man.get("layers")
        if not isinstance(layers, list):
            self.err(where, "layers is not a list")
            return
        diff_ids = None
        if isinstance(cfg, dict):
            rootfs = cfg.get("rootfs")
            if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
                self.err(where + " config", "rootfs.type is not \"layers\"")
            elif not isinstance(rootfs.get("diff_ids"), list):
                self.err(where + " config", "rootfs.diff_ids is not a list")
            else:
                diff_ids = rootfs["diff_ids"]
                if len(diff_ids) != len(layers):
                    self.err(where, "config has %d diff_ids for %d layers" % (len(diff_ids), len(layers)))
        for i, ld in enumerate(layers):
            lw = "%s layers[%d]" % (where, i)
            if not self.check_descriptor(ld, lw):
                continue
            lw += " (%s)" % ld["digest"][:19]
            lmt = ld["mediaType"]
            if lmt not in LAYER_TYPES:
                if cfg is not None:
                    self.err(lw, "unknown layer media type %s" % lmt)
                continue
            fam = "docker" if lmt.startswith("application/vnd.docker.") else "oci"
            if fam != FAMILY[mt]:
                self.err(lw, "layer media type %s in a %s manifest" % (lmt, mt))
            try:
                got = self.check_layer(ld, lw)
            except Exception as e:  # a reader crash is a finding too, not a traceback
                self.err(lw, "cannot read the layer: %s: %s" % (type(e).__name__, e))
                got = None
            if got is None or diff_ids is None or i >= len(diff_ids):
                continue
            if diff_ids[i] != got:
                self.err(lw, "diff_id mismatch: config rootfs.diff_ids[%d] is %s, the uncompressed layer is %s"
                         % (i, diff_ids[i], got))

    def check_layer(self, ld, where):
        """Verifies the blob and the tar inside; returns the computed diff_id."""
        self.counts["layer"] += 1
        digest = ld["digest"]
        try:
            path = self.layout.blob_path(digest)
        except CheckError as e:
            self.err(where, str(e))
            return None
        if not os.path.isfile(path):
            self.err(where, "blob %s is missing" % digest)
            return None
        size = os.path.getsize(path)
        if size != ld["size"]:
            self.err(where, "blob %s has %d bytes, descriptor says %d" % (digest, size, ld["size"]))
        alg, hexd = digest.split(":", 1)
        real = file_digest(path, alg)
        if real != hexd:
            self.err(where, "blob does not match its digest (sha: %s:%s)" % (alg, real))
        comp = LAYER_TYPES[ld["mediaType"]]
        try:
            diff_id = layer_diff_id(path, comp)
        except CheckError as e:
            self.err(where, "layer cannot be decompressed as %s: %s" % (comp, e))
            return None
        f, close = open_uncompressed(path, comp)
        try:
            scan = scan_tar(f)
        except (CheckError, ValueError) as e:
            scan = {"errors": [str(e)]}
        finally:
            close()
        for e in scan["errors"]:
            self.err(where, "tar: " + e)
        # Readers accept a stream without the end-of-archive blocks (umoci 0.4
        # writes such layers), so that is only a warning here; `layers`
        # reports end_zero_blocks for tests that demand exactly two.
        if scan.get("end_zero_blocks", 2) < 2:
            self.warn(where, "tar: %d end-of-archive zero block(s), want 2" % scan["end_zero_blocks"])
        return diff_id

    def check_config(self, cfg, where, cmt):
        self.counts["config"] += 1
        if not isinstance(cfg, dict):
            self.err(where, "config is not a JSON object")
            return
        if cmt == OCI_CONFIG:
            self.schema("config", cfg, where)
        for key in ("architecture", "os"):
            if not isinstance(cfg.get(key), str) or not cfg.get(key):
                self.err(where, "config has no %s" % key)
        created = cfg.get("created")
        if created is not None and (not isinstance(created, str) or not RFC3339_RE.match(created)):
            self.err(where, "created %r is not an RFC 3339 date-time" % (created,))
        for i, h in enumerate(cfg.get("history") or []):
            c = h.get("created") if isinstance(h, dict) else None
            if c is not None and (not isinstance(c, str) or not RFC3339_RE.match(c)):
                self.err(where, "history[%d].created %r is not an RFC 3339 date-time" % (i, c))

    def check_unreferenced(self):
        blobs = os.path.join(self.layout.root, "blobs")
        if not os.path.isdir(blobs):
            self.err("blobs", "the blobs folder is missing")
            return
        for alg in sorted(os.listdir(blobs)):
            adir = os.path.join(blobs, alg)
            if not os.path.isdir(adir):
                self.err("blobs/" + alg, "not a folder")
                continue
            for hexd in sorted(os.listdir(adir)):
                dg = "%s:%s" % (alg, hexd)
                if dg not in self.referenced:
                    (self.err if self.strict else self.warn)("blobs/%s/%s" % (alg, hexd), "blob is not referenced")


def cmd_verify(args):
    layout = Layout(args.layout)
    schemas = Schemas(args.schemas, args.require_schemas)
    v = Verifier(layout, schemas, args.strict)
    if schemas.problem:
        if args.require_schemas:
            v.err("schemas", schemas.problem + " (--require-schemas)")
        else:
            v.warn("schemas", schemas.problem + "; JSON schema validation skipped")
    v.run()
    for w in v.warnings:
        print("warning: " + w, file=sys.stderr)
    for e in v.errors:
        print("error: " + e)
    c = v.counts
    summary = "%d index(es), %d manifest(s), %d config(s), %d layer(s), schemas %s" % (
        c["index"], c["manifest"], c["config"], c["layer"],
        "checked" if schemas.validators is not None else "NOT checked")
    if v.errors:
        print("INVALID: %d error(s); %s" % (len(v.errors), summary))
        return 1
    print("valid: " + summary)
    return 0


# ---------------------------------------------------------------- image selection

def parse_platform(s):
    parts = s.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError("bad platform %r (want OS/ARCH[/VARIANT])" % s)
    return {"os": parts[0], "architecture": parts[1], "variant": parts[2] if len(parts) == 3 else None}


def platform_matches(want, p):
    if not isinstance(p, dict):
        return False
    if p.get("os") != want["os"] or p.get("architecture") != want["architecture"]:
        return False
    return want["variant"] is None or p.get("variant") == want["variant"]


def select_image(layout, ref, platform):
    """(manifest descriptor, manifest, config) for the ref and platform."""
    idx = layout.read_json_file("index.json")
    entries = idx.get("manifests") or []
    if ref is not None:
        entries = [d for d in entries if (d.get("annotations") or {}).get(REF_NAME) == ref]
        if not entries:
            tags = sorted({(d.get("annotations") or {}).get(REF_NAME, "?") for d in idx.get("manifests") or []})
            raise UsageError("no entry tagged %r in index.json (tags: %s)" % (ref, ", ".join(tags)))
    if not entries:
        raise UsageError("index.json has no entries")
    if len({d.get("digest") for d in entries}) > 1:
        tags = sorted({(d.get("annotations") or {}).get(REF_NAME, "?") for d in entries})
        raise UsageError("index.json holds several images; pass --ref (tags: %s)" % ", ".join(tags))
    desc = entries[0]
    want = parse_platform(platform) if platform else None
    matched = False  # the platform was matched on an index entry
    for _ in range(8):  # nested indexes
        mt = desc.get("mediaType")
        if mt in MANIFEST_TYPES:
            man = layout.read_json_blob(desc)
            cfg = layout.read_json_blob(man["config"])
            if want is not None and not matched and not platform_matches(want, cfg):
                raise UsageError("the image is %s, not %s" % (platform_str(cfg), platform))
            return desc, man, cfg
        if mt not in INDEX_TYPES:
            raise UsageError("unexpected media type %s" % mt)
        sub = layout.read_json_blob(desc)
        children = [d for d in sub.get("manifests") or []]
        avail = ", ".join(platform_str(d.get("platform")) for d in children)
        if want is None:
            if len(children) != 1:
                raise UsageError("the index holds several images (%s); pass --platform" % avail)
            desc = children[0]
            continue
        match = [d for d in children if platform_matches(want, d.get("platform"))]
        if len(match) != 1:
            raise UsageError("%d images match platform %s in the index (%s)" % (len(match), platform, avail))
        desc = match[0]
        matched = True
    raise UsageError("indexes nested too deep")


# ---------------------------------------------------------------- list

def norm(name):
    while name.startswith("./"):
        name = name[2:]
    name = name.lstrip("/").rstrip("/")
    if name in ("", "."):
        return "/"
    return "/" + name


def under(path, parent):
    return parent == "/" or path.startswith(parent + "/")


def cmd_list(args):
    layout = Layout(args.layout)
    _, man, _ = select_image(layout, args.ref, args.platform)
    fs = {}
    for ld in man["layers"]:
        comp = LAYER_TYPES.get(ld["mediaType"])
        if comp is None:
            raise CheckError("unknown layer media type %s" % ld["mediaType"])
        f, close = open_uncompressed(layout.blob_path(ld["digest"]), comp)
        this_layer = set()
        try:
            with tarfile.open(fileobj=f, mode="r|") as tf:
                for ti in tf:
                    path = norm(ti.name)
                    parent, _, base = path.rpartition("/")
                    parent = parent or "/"
                    if base == ".wh..wh..opq":
                        # Opaque folder: hide what lower layers put in it.
                        for p in [p for p in fs if p != parent and under(p, parent) and p not in this_layer]:
                            del fs[p]
                        continue
                    if base.startswith(".wh."):
                        gone = (parent.rstrip("/") + "/" + base[4:]) if parent != "/" else "/" + base[4:]
                        for p in [p for p in fs if (p == gone or under(p, gone)) and p not in this_layer]:
                            del fs[p]
                        continue
                    old = fs.get(path)
                    if old is not None and old["type"] == "dir" and not ti.isdir():
                        for p in [p for p in fs if p != path and under(p, path)]:
                            del fs[p]
                    e = {
                        "path": path,
                        "mode": ti.mode & 0o7777,
                        "uid": ti.uid,
                        "gid": ti.gid,
                        "mtime": int(ti.mtime) if float(ti.mtime).is_integer() else ti.mtime,
                        "size": ti.size if ti.isreg() else 0,
                        "linkname": None,
                        "sha256": None,
                    }
                    if ti.isreg():
                        e["type"] = "file"
                        h = hashlib.sha256()
                        src = tf.extractfile(ti)
                        while True:
                            chunk = src.read(CHUNK)
                            if not chunk:
                                break
                            h.update(chunk)
                        e["sha256"] = h.hexdigest()
                    elif ti.isdir():
                        e["type"] = "dir"
                    elif ti.issym():
                        e["type"] = "symlink"
                        e["linkname"] = ti.linkname
                    elif ti.islnk():
                        e["type"] = "hardlink"
                        e["linkname"] = ti.linkname
                        target = fs.get(norm(ti.linkname))
                        if target is not None:
                            e["sha256"] = target["sha256"]
                            e["size"] = target["size"]
                    elif ti.ischr():
                        e["type"] = "char"
                    elif ti.isblk():
                        e["type"] = "block"
                    elif ti.isfifo():
                        e["type"] = "fifo"
                    else:
                        e["type"] = "other"
                    fs[path] = e
                    this_layer.add(path)
        except (tarfile.TarError, OSError, EOFError) as ex:
            close()
            raise CheckError("cannot read layer %s: %s" % (ld["digest"], ex))
        err = close()
        if err:
            raise CheckError(err)
    print_rows([fs[p] for p in sorted(fs)])
    return 0


def print_rows(rows):
    """A JSON array, one object per line."""
    print("[")
    print(",\n".join(json.dumps(r, sort_keys=True) for r in rows))
    print("]")


# ---------------------------------------------------------------- config, manifest, layers

def cmd_config(args):
    layout = Layout(args.layout)
    _, _, cfg = select_image(layout, args.ref, args.platform)
    print(json.dumps(cfg, indent=1, sort_keys=True))
    return 0


def cmd_manifest(args):
    layout = Layout(args.layout)
    _, man, _ = select_image(layout, args.ref, args.platform)
    print(json.dumps(man, indent=1, sort_keys=True))
    return 0


def cmd_layers(args):
    layout = Layout(args.layout)
    _, man, _ = select_image(layout, args.ref, args.platform)
    out = []
    for ld in man["layers"]:
        comp = LAYER_TYPES.get(ld["mediaType"])
        if comp is None:
            raise CheckError("unknown layer media type %s" % ld["mediaType"])
        path = layout.blob_path(ld["digest"])
        f, close = open_uncompressed(path, comp)
        try:
            scan = scan_tar(f)
        finally:
            err = close()
        if err:
            scan["errors"].append(err)
        entry = {
            "digest": ld["digest"],
            "mediaType": ld["mediaType"],
            "size": ld["size"],
            "diff_id": layer_diff_id(path, comp),
        }
        entry.update(scan)
        out.append(entry)
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


# ---------------------------------------------------------------- main

def main(argv):
    ap = argparse.ArgumentParser(prog="oci_check.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check a layout (exit 0 only when valid)")
    v.add_argument("layout")
    v.add_argument("--schemas", default=DEFAULT_SCHEMAS, help="folder of the OCI JSON schemas")
    v.add_argument("--require-schemas", action="store_true",
                   help="fail when the schemas or jsonschema are missing")
    v.add_argument("--strict", action="store_true",
                   help="also fail on unreferenced blobs, index entries without platform, "
                        "documents without mediaType")
    v.set_defaults(func=cmd_verify)
    for name, func, help_ in (("list", cmd_list, "flattened filesystem as JSON"),
                              ("config", cmd_config, "the image config JSON"),
                              ("manifest", cmd_manifest, "the image manifest JSON"),
                              ("layers", cmd_layers, "raw tar headers of each layer as JSON")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("layout")
        p.add_argument("--ref", help="tag (org.opencontainers.image.ref.name) in index.json")
        p.add_argument("--platform", help="OS/ARCH[/VARIANT]")
        p.set_defaults(func=func)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print("oci_check.py: %s" % e, file=sys.stderr)
        return 2
    except CheckError as e:
        print("oci_check.py: error: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
