//! Helpers shared by the integration tests: the `imgc` binary, external tools
//! (never skipped: a missing tool is a failure that points to
//! `scripts/test.sh`), a real registry on loopback, temporary copies of the
//! examples, and the independent layout checker `tests/tools/oci_check.py`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The annotation naming a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `examples/<name>` in the repository.
pub fn example_dir(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// The `imgc` binary under test, with stdin closed and without the
/// environment variables that change its output (`SOURCE_DATE_EPOCH`,
/// `IMGC_THREADS`), so a test sets them explicitly when it wants them. Its
/// cache (the store and the layer cache) is one folder of this test run,
/// never the user's; an [`Env`] gives a test its own.
///
/// `IMGC_TEST_BIN` runs the tests against another build of imgc (an older
/// commit, say, to see a regression test fail where the bug is).
pub fn imgc() -> Command {
    let bin =
        std::env::var_os("IMGC_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_imgc").into());
    static CACHE: OnceLock<TempDir> = OnceLock::new();
    let cache = CACHE.get_or_init(tempdir);
    let mut cmd = Command::new(bin);
    cmd.env_remove("SOURCE_DATE_EPOCH")
        .env_remove("IMGC_THREADS")
        .env("IMGC_CACHE_DIR", cache.path())
        .stdin(Stdio::null());
    cmd
}

/// Whether `tool` is an executable file on PATH (or an executable path).
pub fn on_path(tool: &str) -> bool {
    let is_exec = |p: &Path| {
        p.is_file()
            && fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
    };
    if tool.contains('/') {
        return is_exec(Path::new(tool));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| is_exec(&dir.join(tool))))
        .unwrap_or(false)
}

/// Panics (the test fails, it never skips) unless `tool` is on PATH.
pub fn require(tool: &str) {
    if !on_path(tool) {
        panic!(
            "required tool `{tool}` is not installed (not on PATH).\n\
             Run the tests with `scripts/test.sh`: it installs every tool they need."
        );
    }
}

/// Renders a command for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if let Some(dir) = cmd.get_current_dir() {
        s.push_str(&format!("   (in {})", dir.display()));
    }
    s
}

fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        show(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` and returns its output, whatever the exit status. Every
/// output captured here is checked for every registered test secret
/// ([`register_secret`]): none may ever appear.
pub fn output(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", show(cmd)));
    assert_no_secret(cmd, &out);
    out
}

/// A command's output with how long it ran and its peak memory.
pub struct Measured {
    pub out: Output,
    pub elapsed: Duration,
    /// Peak resident set size of the command, in bytes (see [`measured`]).
    pub max_rss: u64,
    /// It was still running at the limit and was killed.
    pub killed: bool,
}

/// Forks the command in argv[2:] from a small process and writes its peak
/// RSS (KiB) to argv[1]: a child spawned straight from the test process
/// would count the test process's own RSS (Linux carries a process's peak
/// RSS across `exec`, and the test binary holds other tests' data).
const RSS_REPORTER: &str = r#"
import os, resource, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status = os.waitpid(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
if os.WIFSIGNALED(status):
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.WEXITSTATUS(status))
"#;

/// `cmd` run through [`RSS_REPORTER`], in a process group of its own (so
/// that a kill reaches the command too).
fn through_rss_reporter(cmd: &Command, rss_file: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut wrapped = Command::new("python3");
    wrapped
        .args(["-c", RSS_REPORTER])
        .arg(rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .process_group(0);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// Runs `cmd`, killing it (SIGKILL) if it runs past `limit`, and measures
/// its time and peak RSS (its own: see [`RSS_REPORTER`]).
// The child is reaped with `wait4`, not `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn measured(cmd: &mut Command, limit: Duration) -> Measured {
    use std::os::unix::process::ExitStatusExt;
    let rss_dir = tempdir();
    let rss_file = rss_dir.path().join("maxrss");
    let started = Instant::now();
    let mut child = through_rss_reporter(cmd, &rss_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", show(cmd)));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err_t = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    loop {
        // SAFETY: `pid` is our child, not reaped yet; valid out pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if !killed && started.elapsed() > limit {
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            killed = true;
        }
        sleep(Duration::from_millis(5));
    }
    let out = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    };
    assert_no_secret(cmd, &out);
    let kib: u64 = fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Measured {
        out,
        elapsed: started.elapsed(),
        max_rss: kib * 1024,
        killed,
    }
}

/// `len` bytes that compression cannot shrink much (xorshift from `seed`).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Makes a named pipe at `path` (replacing a file there).
pub fn mkfifo(path: &Path) {
    let _ = fs::remove_file(path);
    let ok = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

/// The most memory a refused hostile input may cost imgc.
pub const HOSTILE_MAX_RSS: u64 = 200 * 1024 * 1024;
/// The most time it may take.
pub const HOSTILE_LIMIT: Duration = Duration::from_secs(5);

/// Runs `cmd` (killed after 4× [`HOSTILE_LIMIT`]) and checks it was refused
/// as a hostile input must be: exit 1 within [`HOSTILE_LIMIT`], at most
/// [`HOSTILE_MAX_RSS`], every needle in stderr. Returns stderr.
pub fn refused_fast(cmd: &mut Command, needles: &[&str]) -> String {
    let m = measured(cmd, HOSTILE_LIMIT * 4);
    let err = String::from_utf8_lossy(&m.out.stderr).into_owned();
    assert!(
        !m.killed,
        "still running after {:?}: {err}",
        HOSTILE_LIMIT * 4
    );
    assert_eq!(m.out.status.code(), Some(1), "{err}");
    assert!(m.elapsed < HOSTILE_LIMIT, "took {:?}: {err}", m.elapsed);
    assert!(
        m.max_rss < HOSTILE_MAX_RSS,
        "peak RSS {} MB: {err}",
        m.max_rss >> 20
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    err
}

// ------------------------------------------------------------ secrets

static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Registers a secret a test hands imgc (a password, a token, the base64
/// of `user:password`): [`output`] fails any command that prints it.
pub fn register_secret(secret: &str) {
    if secret.len() >= 6 {
        let mut all = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
        if !all.iter().any(|s| s == secret) {
            all.push(secret.to_string());
        }
    }
}

/// Registers a password and the base64 of `user:password` (Basic auth).
pub fn register_login(user: &str, password: &str) {
    register_secret(password);
    register_secret(&b64(&format!("{user}:{password}")));
}

/// Panics when a registered secret appears in a command's output.
pub fn assert_no_secret(cmd: &Command, out: &Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let all = SECRETS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(s) = all.iter().find(|s| text.contains(s.as_str())) {
        panic!(
            "a test secret ({} characters, starting {:?}) appeared in the output of {}",
            s.len(),
            &s[..3],
            show(cmd)
        );
    }
}

pub fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--insecure-registry HOST`.
pub fn insecure(host: &str) -> [String; 2] {
    ["--insecure-registry".to_string(), host.to_string()]
}

// ------------------------------------------------------------ isolated environment

/// An isolated environment: its own cache, home, credential files and
/// certificate folders, and a `bin` folder first on PATH, so nothing of the
/// machine's docker or podman login or TLS setup is used.
pub struct Env {
    dir: TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempdir();
        for d in ["cache", "home/.docker", "config", "bin", "certs.d"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Env { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// imgc with this environment.
    pub fn imgc(&self) -> Command {
        let mut cmd = imgc();
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("IMGC_CACHE_DIR", self.cache())
            .env("HOME", self.path("home"))
            .env("DOCKER_CONFIG", self.path("home/.docker"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("IMGC_CERTS_DIRS", self.path("certs.d"))
            .env("PATH", path)
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("IMGC_CONFIG")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY");
        cmd
    }

    pub fn config_json(&self) -> PathBuf {
        self.path("home/.docker/config.json")
    }

    pub fn docker_config(&self, json: &str) {
        fs::write(self.config_json(), json).unwrap();
    }

    /// `auths` with `user:password` for `host` (both registered as secrets).
    pub fn basic_login(&self, host: &str, user: &str, password: &str) {
        register_login(user, password);
        let auth = b64(&format!("{user}:{password}"));
        self.docker_config(&format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#));
    }

    /// `auths` with an identity token for `host` (registered as a secret).
    pub fn token_login(&self, host: &str, token: &str) {
        register_secret(token);
        self.docker_config(&format!(
            r#"{{"auths":{{"{host}":{{"identitytoken":"{token}"}}}}}}"#
        ));
    }
}

/// Runs `cmd`, panics with its stderr unless it exits 0, returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!("command failed\n{}", describe(cmd, &out));
    }
    String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("stdout of {} is not UTF-8: {e}", show(cmd)))
}

/// Runs `cmd`, panics unless it exits non-zero, returns the output.
pub fn run_fails(cmd: &mut Command) -> Output {
    let out = output(cmd);
    if out.status.success() {
        panic!(
            "command succeeded, a failure was expected\n{}",
            describe(cmd, &out)
        );
    }
    out
}

/// A temporary folder (removed on drop).
pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("imgc-it-")
        .tempdir()
        .expect("create a temporary folder")
}

/// Copies a folder recursively: files with their permissions, symlinks as
/// symlinks (targets verbatim), folders with their permissions.
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    let mut entries: Vec<_> = fs::read_dir(src)
        .unwrap_or_else(|e| panic!("read {}: {e}", src.display()))
        .map(|e| e.expect("read folder entry").path())
        .collect();
    entries.sort();
    for from in entries {
        let to = dst.join(from.file_name().unwrap());
        let meta = fs::symlink_metadata(&from).unwrap();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&from).unwrap();
            std::os::unix::fs::symlink(&target, &to)
                .unwrap_or_else(|e| panic!("symlink {}: {e}", to.display()));
        } else if meta.is_dir() {
            copy_dir(&from, &to);
        } else {
            fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        }
    }
    let mode = fs::metadata(src).unwrap().permissions().mode();
    fs::set_permissions(dst, fs::Permissions::from_mode(mode)).unwrap();
}

/// Copies `examples/<name>` into a new temporary folder; returns the folder
/// (keep it alive) and the path of the copy (`<tmp>/<name>`).
pub fn copy_example(name: &str) -> (TempDir, PathBuf) {
    let tmp = tempdir();
    let dst = tmp.path().join(name);
    copy_dir(&example_dir(name), &dst);
    (tmp, dst)
}

/// Every file below `dir`, as relative path -> bytes (symlinks as
/// "symlink -> target", folders as "dir"), to compare two trees exactly.
pub fn tree_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, format!("symlink -> {}", t.display()).into_bytes());
            } else if meta.is_dir() {
                out.insert(rel + "/", b"dir".to_vec());
                walk(root, &p, out);
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts two folders hold the same names with the same bytes, naming the
/// paths that differ.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ta = tree_contents(a);
    let tb = tree_contents(b);
    let mut diffs = Vec::new();
    for (k, v) in &ta {
        match tb.get(k) {
            None => diffs.push(format!("only in {}: {k}", a.display())),
            Some(w) if w != v => diffs.push(format!(
                "differs: {k} ({} bytes vs {} bytes)",
                v.len(),
                w.len()
            )),
            _ => {}
        }
    }
    for k in tb.keys().filter(|k| !ta.contains_key(*k)) {
        diffs.push(format!("only in {}: {k}", b.display()));
    }
    assert!(
        diffs.is_empty(),
        "layouts {} and {} differ:\n{}",
        a.display(),
        b.display(),
        diffs.join("\n")
    );
    assert!(!ta.is_empty(), "{} is empty", a.display());
}

// ------------------------------------------------------------ imgc build

/// Checks that a build's stdout is exactly one line `sha256:<64 hex>` and
/// returns the digest.
pub fn digest_line(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must be exactly one line (the index digest), got {stdout:?}"
    );
    let d = lines[0];
    assert!(
        is_sha256_digest(d),
        "stdout line is not sha256:<64 lowercase hex>: {d:?}"
    );
    assert!(
        stdout.ends_with('\n'),
        "stdout line lacks its newline: {stdout:?}"
    );
    d.to_string()
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

/// `imgc build SPEC --output oci:OUT ARGS...`; asserts success and the
/// stdout contract; returns the index digest.
pub fn build(spec: &Path, out: &Path, args: &[&str]) -> String {
    let mut cmd = imgc();
    cmd.arg("build")
        .arg(spec)
        .arg("--output")
        .arg(oci_arg(out))
        .args(args);
    digest_line(&run(&mut cmd))
}

/// `oci:DIR` as an OsString.
pub fn oci_arg(dir: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from("oci:");
    s.push(dir.as_os_str());
    s
}

/// Writes `compression = "<c>"` into the `[image]` table of a spec file.
pub fn set_compression(spec: &Path, compression: &str) {
    let text = fs::read_to_string(spec).unwrap();
    let line = format!("compression = \"{compression}\"");
    let mut done = false;
    let mut out: Vec<String> = Vec::new();
    for l in text.lines() {
        if l.trim_start().starts_with("compression") && l.contains('=') {
            out.push(line.clone());
            done = true;
        } else {
            out.push(l.to_string());
        }
    }
    if !done {
        let pos = out
            .iter()
            .position(|l| l.trim() == "[image]")
            .expect("spec has an [image] table");
        out.insert(pos + 1, line);
    }
    fs::write(spec, out.join("\n") + "\n").unwrap();
}

// ------------------------------------------------------------ layout reading

pub fn read_json(path: &Path) -> Value {
    let raw = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The path of a blob in a layout.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest has an algorithm");
    layout.join("blobs").join(alg).join(hex)
}

pub fn read_blob_json(layout: &Path, digest: &str) -> Value {
    read_json(&blob_path(layout, digest))
}

/// The entries of `index.json`.
pub fn index_entries(layout: &Path) -> Vec<Value> {
    read_json(&layout.join("index.json"))["manifests"]
        .as_array()
        .expect("index.json has manifests")
        .clone()
}

/// The tags of `index.json` (ref.name annotation) -> digest.
pub fn tags(layout: &Path) -> BTreeMap<String, String> {
    index_entries(layout)
        .iter()
        .map(|d| {
            (
                d["annotations"][REF_NAME]
                    .as_str()
                    .unwrap_or_else(|| panic!("index.json entry without {REF_NAME}: {d}"))
                    .to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `os/arch[/variant]` of a platform object.
pub fn platform_string(p: &Value) -> String {
    let mut s = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or("?"),
        p["architecture"].as_str().unwrap_or("?")
    );
    if let Some(v) = p["variant"].as_str() {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// The per-platform manifests of the image index `index_digest`:
/// "os/arch" (variant left out) -> (descriptor, manifest).
pub fn platform_manifests(layout: &Path, index_digest: &str) -> BTreeMap<String, (Value, Value)> {
    let index = read_blob_json(layout, index_digest);
    let mut out = BTreeMap::new();
    for d in index["manifests"].as_array().expect("index has manifests") {
        let p = &d["platform"];
        let key = format!(
            "{}/{}",
            p["os"].as_str().unwrap_or("?"),
            p["architecture"].as_str().unwrap_or("?")
        );
        let man = read_blob_json(layout, d["digest"].as_str().unwrap());
        assert!(
            out.insert(key.clone(), (d.clone(), man)).is_none(),
            "platform {key} twice"
        );
    }
    out
}

/// Writes a blob into a layout; returns its digest.
pub fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    use sha2::Digest;
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    let digest = format!("sha256:{hex}");
    fs::write(blob_path(layout, &digest), bytes).unwrap();
    digest
}

/// sha256 of bytes as `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

// ------------------------------------------------------------ python + oci_check.py

/// A Python 3 that has `jsonschema` (Debian's /usr/bin/python3 with
/// python3-jsonschema first, then `python3` on PATH).
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        for cand in ["/usr/bin/python3", "python3"] {
            let ok = Command::new(cand)
                .args(["-c", "import jsonschema"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return PathBuf::from(cand);
            }
        }
        panic!(
            "no python3 with the jsonschema module (tried /usr/bin/python3 and python3).\n\
             Run the tests with `scripts/test.sh`: it installs python3-jsonschema."
        )
    })
}

/// `python3 tests/tools/oci_check.py` (add the subcommand and arguments).
pub fn oci_check() -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/tools/oci_check.py"));
    cmd
}

/// `oci_check.py verify --require-schemas --strict LAYOUT` must pass (what
/// every layout imgc writes must pass).
pub fn assert_layout_valid(layout: &Path) {
    verify_layout(layout, true);
}

/// `oci_check.py verify --require-schemas [--strict] LAYOUT` must pass.
/// Without `strict`, unreferenced blobs, index entries without platform and
/// documents without mediaType (as umoci writes them) are only warnings.
pub fn verify_layout(layout: &Path, strict: bool) {
    require("zstd");
    let mut cmd = oci_check();
    cmd.args(["verify", "--require-schemas"]);
    if strict {
        cmd.arg("--strict");
    }
    run(cmd.arg(layout));
}

fn image_args(cmd: &mut Command, platform: &str, tag: Option<&str>) {
    cmd.args(["--platform", platform]);
    if let Some(t) = tag {
        cmd.args(["--ref", t]);
    }
}

/// The flattened filesystem of a platform: path ("/etc/passwd") -> entry.
pub fn list_fs(layout: &Path, platform: &str, tag: Option<&str>) -> BTreeMap<String, Value> {
    let mut cmd = oci_check();
    cmd.arg("list").arg(layout);
    image_args(&mut cmd, platform, tag);
    let v: Value = serde_json::from_str(&run(&mut cmd)).expect("oci_check list prints JSON");
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// The config JSON of a platform.
pub fn image_config(layout: &Path, platform: &str, tag: Option<&str>) -> Value {
    let mut cmd = oci_check();
    cmd.arg("config").arg(layout);
    image_args(&mut cmd, platform, tag);
    serde_json::from_str(&run(&mut cmd)).expect("oci_check config prints JSON")
}

/// The raw tar headers of each layer of a platform (see oci_check.py).
pub fn layer_headers(layout: &Path, platform: &str, tag: Option<&str>) -> Vec<Value> {
    let mut cmd = oci_check();
    cmd.arg("layers").arg(layout);
    image_args(&mut cmd, platform, tag);
    let v: Value = serde_json::from_str(&run(&mut cmd)).expect("oci_check layers prints JSON");
    v.as_array().unwrap().clone()
}

// ------------------------------------------------------------ skopeo, umoci

/// `skopeo --insecure-policy` (the tests copy only what they built).
pub fn skopeo() -> Command {
    require("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "--command-timeout", "120s"]);
    cmd
}

/// Adds an `index.json` entry tagging each platform manifest of the image
/// index `index_digest` as `os-arch` (umoci 0.4 cannot unpack an index).
/// Returns platform ("os/arch") -> tag.
pub fn tag_platform_manifests(layout: &Path, index_digest: &str) -> BTreeMap<String, String> {
    let index_path = layout.join("index.json");
    let mut top = read_json(&index_path);
    let mut tagged = BTreeMap::new();
    for (plat, (desc, _)) in platform_manifests(layout, index_digest) {
        let tag = plat.replace('/', "-");
        let entry = serde_json::json!({
            "mediaType": desc["mediaType"],
            "digest": desc["digest"],
            "size": desc["size"],
            "annotations": { REF_NAME: tag },
        });
        top["manifests"].as_array_mut().unwrap().push(entry);
        tagged.insert(plat, tag);
    }
    fs::write(&index_path, serde_json::to_vec(&top).unwrap()).unwrap();
    tagged
}

/// `umoci unpack --rootless --image LAYOUT:TAG BUNDLE`; returns BUNDLE/rootfs.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    require("umoci");
    let mut image = layout.as_os_str().to_owned();
    image.push(":");
    image.push(tag);
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(&image)
        .arg(bundle));
    bundle.join("rootfs")
}

// ------------------------------------------------------------ registry

/// A `docker-registry` (CNCF distribution) serving plain HTTP on a free
/// loopback port, with its storage in a temporary folder. Stopped (SIGTERM,
/// then SIGKILL after 5 s) and removed on drop.
pub struct Registry {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        require("docker-registry");
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let dir = tempdir();
            let storage = dir.path().join("storage");
            fs::create_dir(&storage).unwrap();
            fs::write(
                dir.path().join("config.yml"),
                registry_config(&storage, port),
            )
            .unwrap();
            let child = serve(dir.path());
            let mut reg = Registry { child, port, dir };
            match reg.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return reg,
                Err(why) => {
                    last = format!("{why}\n--- registry log ---\n{}", reg.log());
                    // Drop stops it; a port taken meanwhile is retried on another port.
                    if !last.contains("address already in use") {
                        panic!("docker-registry did not start on port {port}: {last}");
                    }
                }
            }
        }
        panic!("docker-registry did not start after 5 attempts: {last}");
    }

    /// Stops it (SIGKILL: a crash, or a restart that drops every
    /// connection), keeps it down for `down`, then starts it again on the
    /// same port with the same storage: what a registry deploy looks like.
    pub fn restart_after(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        sleep(down);
        self.child = serve(self.dir.path());
        if let Err(why) = self.wait_ready(Duration::from_secs(20)) {
            panic!("docker-registry did not come back: {why}\n{}", self.log());
        }
    }

    /// Its storage folder (distribution's filesystem driver root).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1:PORT".
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `docker://127.0.0.1:PORT/<repo_ref>` for skopeo.
    pub fn docker_ref(&self, repo_ref: &str) -> String {
        format!("docker://{}/{}", self.host_port(), repo_ref)
    }

    /// What the registry has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("docker-registry exited: {status}"));
            }
            // Ours answers: it logged that it listens on the port, and /v2/ says 200.
            if self.log().contains(&listening) {
                if let Some(code) = http_status(self.port, "/v2/") {
                    if code == 200 {
                        return Ok(());
                    }
                    return Err(format!("GET /v2/ answered {code}"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not serving after {limit:?}"));
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("sh")
            .args(["-c", "kill -TERM \"$0\"", &pid])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `docker-registry serve DIR/config.yml`, logging to a fresh
/// `DIR/registry.log`.
fn serve(dir: &Path) -> Child {
    let log = fs::File::create(dir.join("registry.log")).unwrap();
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"))
}

fn registry_config(storage: &Path, port: u16) -> String {
    let quoted = format!("'{}'", storage.display().to_string().replace('\'', "''"));
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {quoted}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: imgc-tests-only\n\
         health:\n  storagedriver:\n    enabled: false\n"
    )
}

/// A port that was free a moment ago (bind port 0, read it, release it).
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// The status code of `GET path` on 127.0.0.1:port, or None when nothing
/// answers (yet). A raw HTTP/1.1 request: no client library needed.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: imgc-tests\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}
