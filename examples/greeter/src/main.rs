//! The quick start's app: a static program that says hello and shows what
//! the image's config gave it (user, working folder, environment), so that
//! running the image shows the config was applied.
//!
//! `scripts/quickstart.sh` compiles it for the host with `rustc` (no
//! crates, statically linked, so it runs on `scratch`).

use std::io::Write;

/// `Uid:` and `Gid:` of /proc/self/status (the real ids).
fn ids() -> (String, String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_string()
    };
    (field("Uid:"), field("Gid:"))
}

fn main() {
    let file = std::env::var("GREETING_FILE").unwrap_or_else(|_| "/etc/greeter/greeting.txt".into());
    let greeting = std::fs::read_to_string(&file).unwrap_or_else(|e| format!("({file}: {e})\n"));
    let (uid, gid) = ids();
    let cwd = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{greeting}");
    let _ = writeln!(out, "user {uid}:{gid}, working folder {cwd}");
    let _ = writeln!(out, "GREETING_FILE={file}");
    if !args.is_empty() {
        let _ = writeln!(out, "arguments: {}", args.join(" "));
    }
}
