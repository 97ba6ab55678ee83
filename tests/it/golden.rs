//! Golden digests: the output bytes of the shipped examples, and of a layer
//! large enough to span several compression blocks, are pinned here. A
//! failure means the output format changed: if that is intended, update the
//! digest AND say so under "Format changes" in CHANGELOG.md.

use crate::support::*;
use std::fs;

const HELLO: &str = "sha256:2d69c231038fe1a1085cfd64c008d769ab05bcaf39f1e174cee2750a9487c5b3";
const MULTI_ARCH: &str = "sha256:a8014949a153e26eb50e430ea37bf2f00459a82a0e73d920386383619d7938be";
const MULTI_ARCH_ZSTD: &str =
    "sha256:02e696a4cec823cd608e9b7631eb3533951480869f0604343091a034e8e28041";
const MULTI_ARCH_NONE: &str =
    "sha256:f677847362b5bd4c2a294d09d476fd4883cfbd811f6012e22f2bb31cc7c8a83e";
const BIG_GZIP: &str = "sha256:51368e85ce0de93d65fd91f9c143394fecae398351b78fc2a9d545543f23c112";
const BIG_ZSTD: &str = "sha256:a55575164905744229679a2a8a940074a98bc086a130d0e3a32ba8ed20de68df";
/// A zstd layer of several of libzstd's multithreaded jobs: pins the job size.
const JOBS_ZSTD: &str = "sha256:3200d440cf06e514b98ae3ebfcbe21c583e23e5dc596c0d483e9e2d0eb1b5141";

fn check(name: &str, got: &str, want: &str) {
    assert_eq!(
        got, want,
        "golden digest of {name} changed: the output bytes changed. If intended, update \
         tests/it/golden.rs and list it under \"Format changes\" in CHANGELOG.md"
    );
}

#[test]
fn examples_match_their_golden_digests() {
    let (_t, hello) = copy_example("hello");
    check(
        "examples/hello",
        &build(&hello.join("image.toml"), &hello.join("out"), &[]),
        HELLO,
    );
    let (_t, ma) = copy_example("multi-arch");
    let spec = ma.join("image.toml");
    check(
        "examples/multi-arch",
        &build(&spec, &ma.join("out"), &[]),
        MULTI_ARCH,
    );
    set_compression(&spec, "zstd");
    check(
        "examples/multi-arch (zstd)",
        &build(&spec, &ma.join("out-z"), &[]),
        MULTI_ARCH_ZSTD,
    );
    set_compression(&spec, "none");
    check(
        "examples/multi-arch (none)",
        &build(&spec, &ma.join("out-n"), &[]),
        MULTI_ARCH_NONE,
    );
}

/// Deterministic, partly compressible bytes (text-like runs and noise).
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            let word = b"layer block deterministic gzip zstd tar header ";
            let start = (x % 40) as usize;
            out.extend_from_slice(&word[start..start + 8]);
        }
    }
    out.truncate(len);
    out
}

#[test]
fn a_multi_block_layer_matches_its_golden_digest() {
    let tmp = tempdir();
    let ctx = tmp.path();
    fs::write(
        ctx.join("big.bin"),
        pseudo_random_bytes(3 * 1024 * 1024 + 123_457),
    )
    .unwrap();
    let spec = ctx.join("image.toml");
    fs::write(
        &spec,
        "[image]\nplatforms = [\"linux/amd64\"]\ncompression = \"gzip\"\n[[layers]]\nname = \"big\"\nfiles = [{ src = \"big.bin\", dst = \"/big.bin\" }]\n",
    )
    .unwrap();
    let gz1 = build(&spec, &ctx.join("o1"), &["-j", "1"]);
    let gz3 = build(&spec, &ctx.join("o3"), &["-j", "3"]);
    assert_eq!(gz1, gz3, "gzip bytes depend on the thread count");
    check("3 MiB gzip layer", &gz1, BIG_GZIP);
    set_compression(&spec, "zstd");
    let z1 = build(&spec, &ctx.join("z1"), &["-j", "1"]);
    let z2 = build(&spec, &ctx.join("z2"), &["-j", "2"]);
    assert_eq!(z1, z2, "zstd bytes depend on the thread count");
    check("3 MiB zstd layer", &z1, BIG_ZSTD);
}

#[test]
fn a_zstd_layer_of_several_jobs_matches_its_golden_digest() {
    let tmp = tempdir();
    let ctx = tmp.path();
    fs::write(
        ctx.join("big.bin"),
        pseudo_random_bytes(13 * 1024 * 1024 + 4_321),
    )
    .unwrap();
    let spec = ctx.join("image.toml");
    fs::write(
        &spec,
        "[image]\nplatforms = [\"linux/amd64\"]\ncompression = \"zstd\"\n[[layers]]\nname = \"big\"\nfiles = [{ src = \"big.bin\", dst = \"/big.bin\" }]\n",
    )
    .unwrap();
    let z1 = build(&spec, &ctx.join("z1"), &["-j", "1", "--no-cache"]);
    let z3 = build(&spec, &ctx.join("z3"), &["-j", "3", "--no-cache"]);
    assert_eq!(z1, z3, "zstd bytes depend on the thread count");
    check("13 MiB zstd layer", &z1, JOBS_ZSTD);
}
