//! imgc against a bearer-token registry: a real `docker-registry` behind the
//! proxy's [`Gate`], which plays the token server (challenges, the token
//! endpoint with basic credentials or an identity token, per-scope tokens).
//! Push, pull, cross-repository mounts, wrong credentials, a realm on
//! another host, tokens expiring mid-push; never a secret in the output or
//! on the registry's side.

use crate::proxy::{Gate, MountDenied, Proxy, Rule, TokenCreds, TokenRequest};
use crate::support::*;
use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use tempfile::TempDir;

const USER: &str = "alice";
const PASSWORD: &str = "gate-Pa55word-q7Zx";
const IDENTITY_TOKEN: &str = "refresh-6b1f0c2e-identity-Tok3n";
/// imgc's default number of concurrent blob transfers.
const TRANSFERS: usize = 4;

/// A real registry and a gate in front of it.
fn gated(gate: Gate) -> (Registry, Proxy) {
    let reg = Registry::start();
    let proxy =
        Proxy::start_with_gate(SocketAddr::from(([127, 0, 0, 1], reg.port())), vec![], gate);
    (reg, proxy)
}

fn oci_ref(dir: &std::path::Path, tag: &str) -> std::ffi::OsString {
    let mut s = oci_arg(dir);
    s.push(":");
    s.push(tag);
    s
}

/// `imgc push` of the multi-arch example's base layout to `host/<repo_tag>`.
fn push_base(env: &Env, host: &str, repo_tag: &str) -> Output {
    let base = example_dir("multi-arch").join("base");
    output(
        env.imgc()
            .arg("push")
            .arg(oci_ref(&base, "1.0"))
            .arg(format!("{host}/{repo_tag}"))
            .args(insecure(host)),
    )
}

/// The multi-arch example, on `base` from a registry, named `name`.
fn app(base: &str, name: &str) -> (TempDir, PathBuf) {
    let (tmp, dir) = copy_example("multi-arch");
    let spec = dir.join("image.toml");
    let text = fs::read_to_string(&spec).unwrap();
    let text = text
        .replace("base = \"oci:base:1.0\"", &format!("base = \"{base}\""))
        .replace(
            "name = \"example.com/imgc/multi-arch\"",
            &format!("name = \"{name}\""),
        );
    assert!(text.contains(base) && text.contains(name));
    fs::write(&spec, text).unwrap();
    (tmp, spec)
}

/// The digest skopeo reads for a reference on the real registry (no gate).
fn digest_on(reg: &Registry, repo_tag: &str) -> String {
    let out = output(
        skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{repo_tag}", reg.host_port())),
    );
    assert!(out.status.success(), "skopeo inspect: {}", stderr(&out));
    sha256_digest(&out.stdout)
}

/// No credential and no token the gate issued appears in `text`.
fn assert_no_secrets(proxy: &Proxy, text: &str) {
    let mut secrets = vec![
        PASSWORD.to_string(),
        b64(&format!("{USER}:{PASSWORD}")),
        IDENTITY_TOKEN.to_string(),
    ];
    secrets.extend(proxy.token_requests().into_iter().filter_map(|t| t.token));
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "`{s}` shown in:\n{text}");
    }
}

/// The registry's side never saw a credential, and every `/v2/` request
/// carried a bearer token or nothing (never basic auth).
fn assert_registry_side_clean(proxy: &Proxy) {
    assert_eq!(proxy.secret_leaks(), Vec::<String>::new());
    let odd: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r.path.starts_with("/v2") && !matches!(r.auth.as_deref(), None | Some("Bearer"))
        })
        .collect();
    assert!(odd.is_empty(), "{odd:#?}");
}

/// The scope sets asked for, each sorted, deduplicated.
fn scope_sets(reqs: &[TokenRequest]) -> BTreeSet<Vec<String>> {
    reqs.iter()
        .map(|t| {
            let mut s = t.scopes.clone();
            s.sort();
            s
        })
        .collect()
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn push_and_inspect_through_a_bearer_gate_with_basic_credentials() {
    let (reg, proxy) = gated(Gate::new(USER, PASSWORD));
    let host = proxy.host_port();
    let env = Env::new();
    env.basic_login(&host, USER, PASSWORD);

    let out = push_base(&env, &host, "base:1.0");
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = digest_line(&stdout(&out));
    assert_no_secrets(&proxy, &stderr(&out));
    // What the real registry holds is what imgc pushed.
    assert_eq!(digest_on(&reg, "base:1.0"), digest);

    // Every token came from the realm the challenge named, with basic
    // credentials, for the service and the push scope.
    let pushes = proxy.token_requests();
    assert!(!pushes.is_empty());
    for t in &pushes {
        assert_eq!(t.method, "GET", "{t:#?}");
        assert_eq!(t.service.as_deref(), Some("test-registry"), "{t:#?}");
        assert_eq!(
            t.creds,
            TokenCreds::Basic {
                user: USER.into(),
                ok: true
            }
        );
        assert_eq!(t.status, 200);
        assert_eq!(t.scopes, ["repository:base:pull,push"], "{t:#?}");
        assert_eq!(t.granted, ["repository:base:pull,push"], "{t:#?}");
    }
    // Tokens are reused, not fetched per request: at most one per
    // concurrent transfer (4 by default; see the ignored test below for one
    // in all).
    let v2 = proxy.count("", "/v2/");
    assert!(v2 > 15, "{:#?}", proxy.requests());
    assert!(pushes.len() <= TRANSFERS, "{pushes:#?}");

    // One transfer at a time: exactly one token for the whole push, and one
    // 401 (the first request, before imgc knew the challenge).
    let first = proxy.requests().len();
    let before = proxy.token_requests().len();
    let base = example_dir("multi-arch").join("base");
    let out = output(
        env.imgc()
            .arg("push")
            .arg(oci_ref(&base, "1.0"))
            .arg(format!("{host}/serial:1.0"))
            .args(["--transfers", "1"])
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest_line(&stdout(&out)), digest);
    let serial = proxy.token_requests()[before..].to_vec();
    assert_eq!(serial.len(), 1, "{serial:#?}");
    assert_eq!(serial[0].scopes, ["repository:serial:pull,push"]);
    let reqs = proxy.requests()[first..].to_vec();
    assert_eq!(
        reqs.iter().filter(|r| r.status == Some(401)).count(),
        1,
        "{reqs:#?}"
    );
    assert!(reqs.len() > 15, "{reqs:#?}");

    // inspect through the gate: a pull token, the same digest.
    let before = proxy.token_requests().len();
    let out = output(
        env.imgc()
            .arg("inspect")
            .arg(format!("{host}/base:1.0"))
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("digest      {digest}")),
        "{}",
        stdout(&out)
    );
    assert_no_secrets(&proxy, &stderr(&out));
    assert_no_secrets(&proxy, &stdout(&out));
    let pulls = proxy.token_requests()[before..].to_vec();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0].scopes, ["repository:base:pull"]);

    assert_registry_side_clean(&proxy);
}

#[test]
fn an_identity_token_is_sent_as_a_refresh_token_form() {
    let (reg, proxy) = gated(Gate::new(USER, PASSWORD).identity_token(IDENTITY_TOKEN));
    let host = proxy.host_port();
    let env = Env::new();
    env.token_login(&host, IDENTITY_TOKEN);

    let out = push_base(&env, &host, "base:1.0");
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = digest_line(&stdout(&out));
    assert_eq!(digest_on(&reg, "base:1.0"), digest);
    let out2 = output(
        env.imgc()
            .arg("inspect")
            .arg(format!("{host}/base:1.0"))
            .args(insecure(&host)),
    );
    assert!(out2.status.success(), "{}", stderr(&out2));
    assert!(stdout(&out2).contains(&digest), "{}", stdout(&out2));

    let reqs = proxy.token_requests();
    assert!(!reqs.is_empty());
    for t in &reqs {
        assert_eq!(t.method, "POST", "{t:#?}");
        assert_eq!(t.creds, TokenCreds::Refresh { ok: true }, "{t:#?}");
        assert_eq!(t.client_id.as_deref(), Some("imgc"));
        assert_eq!(t.service.as_deref(), Some("test-registry"));
        assert_eq!(t.status, 200);
    }
    assert_eq!(
        scope_sets(&reqs),
        BTreeSet::from([
            sorted(&["repository:base:pull,push"]),
            sorted(&["repository:base:pull"])
        ])
    );
    for out in [&out, &out2] {
        assert_no_secrets(&proxy, &stderr(out));
    }
    assert_registry_side_clean(&proxy);
}

#[test]
fn wrong_or_missing_credentials_fail_naming_the_registry_and_where_imgc_looked() {
    let (reg, proxy) = gated(Gate::new(USER, PASSWORD).identity_token(IDENTITY_TOKEN));
    let host = proxy.host_port();
    let env = Env::new();
    env.basic_login(&host, USER, PASSWORD);
    let out = push_base(&env, &host, "base:1.0");
    assert!(out.status.success(), "{}", stderr(&out));

    // A wrong password, a wrong identity token, no credentials at all.
    let wrong_pw = "wrong-Pa55word-k2";
    let wrong_tok = "refresh-wrong-identity-Tok3n";
    let bad_pw = Env::new();
    bad_pw.basic_login(&host, USER, wrong_pw);
    let bad_tok = Env::new();
    bad_tok.token_login(&host, wrong_tok);
    let nothing = Env::new();
    for (env, creds) in [
        (
            &bad_pw,
            TokenCreds::Basic {
                user: USER.into(),
                ok: false,
            },
        ),
        (&bad_tok, TokenCreds::Refresh { ok: false }),
        (&nothing, TokenCreds::None),
    ] {
        for args in [
            vec!["inspect".to_string(), format!("{host}/base:1.0")],
            vec![
                "push".to_string(),
                oci_ref(&example_dir("multi-arch").join("base"), "1.0")
                    .to_string_lossy()
                    .into_owned(),
                format!("{host}/other:1.0"),
            ],
        ] {
            let before = proxy.token_requests().len();
            let out = run_fails(env.imgc().args(&args).args(insecure(&host)));
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains(&host), "{err}");
            assert!(err.contains("401"), "{err}");
            assert!(
                err.contains(&env.config_json().display().to_string()),
                "{err}"
            );
            assert!(err.contains("docker login"), "{err}");
            assert_no_secrets(&proxy, &err);
            for s in [wrong_pw, wrong_tok, &b64(&format!("{USER}:{wrong_pw}"))] {
                assert!(!err.contains(s), "{err}");
            }
            let tried = proxy.token_requests()[before..].to_vec();
            // One failed attempt per concurrent transfer at most (ideally
            // one in all; see the ignored test below).
            assert!(!tried.is_empty() && tried.len() <= TRANSFERS, "{tried:#?}");
            for t in &tried {
                assert_eq!(t.creds, creds, "{t:#?}");
                assert_eq!(t.status, 401);
            }
        }
    }
    // Nothing of `other` reached the registry.
    let out = output(
        skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/other:1.0", reg.host_port())),
    );
    assert!(!out.status.success());
    assert_registry_side_clean(&proxy);
}

#[test]
fn credentials_never_go_to_a_plain_http_realm_on_another_host() {
    // The realm says localhost:PORT, the registry is 127.0.0.1:PORT: the same
    // server, but another host to imgc, over plain HTTP. The token requests
    // must come without credentials (anonymous pull works, a push cannot).
    let reg = Registry::start();
    let env = Env::new();
    let out = push_base(&env, &reg.host_port(), "base:1.0");
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = digest_line(&stdout(&out));

    let proxy = Proxy::start_with_gate(
        SocketAddr::from(([127, 0, 0, 1], reg.port())),
        vec![],
        Gate::new(USER, PASSWORD)
            .anonymous_pull()
            .realm_hostname("localhost"),
    );
    assert!(proxy.realm().starts_with("http://localhost:"));
    let host = proxy.host_port();
    let user_env = Env::new();
    user_env.basic_login(&host, USER, PASSWORD);
    let out = output(
        user_env
            .imgc()
            .arg("inspect")
            .arg(format!("{host}/base:1.0"))
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&digest));
    let reqs = proxy.token_requests();
    assert!(!reqs.is_empty());
    for t in &reqs {
        assert_eq!(t.creds, TokenCreds::None, "{t:#?}");
    }
    assert_no_secrets(&proxy, &stderr(&out));
    assert_registry_side_clean(&proxy);
}

#[test]
fn a_build_on_a_base_in_another_repository_mounts_its_layers_through_the_gate() {
    let (reg, proxy) = gated(Gate::new(USER, PASSWORD));
    let host = proxy.host_port();
    let env = Env::new();
    env.basic_login(&host, USER, PASSWORD);
    let out = push_base(&env, &host, "base:1.0");
    assert!(out.status.success(), "{}", stderr(&out));

    let before = proxy.token_requests().len();
    let first = proxy.requests().len();
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let out_dir = env.path("out");
    let out = output(
        env.imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&out_dir))
            .arg("--push")
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = digest_line(&stdout(&out));
    assert_eq!(digest_on(&reg, "app:2.1.0"), digest);
    assert_no_secrets(&proxy, &stderr(&out));

    // The base was pulled with a pull token, the app pushed with a push
    // token, and the mounts asked for pull on the base as well.
    let reqs = proxy.token_requests()[before..].to_vec();
    let sets = scope_sets(&reqs);
    let mount_set = sorted(&["repository:app:pull,push", "repository:base:pull"]);
    assert!(sets.contains(&mount_set), "{reqs:#?}");
    assert!(
        sets.contains(&sorted(&["repository:base:pull"])),
        "{reqs:#?}"
    );
    for t in &reqs {
        assert_eq!(t.status, 200, "{t:#?}");
        let mut granted = t.granted.clone();
        granted.sort();
        assert_eq!(granted, {
            let mut s = t.scopes.clone();
            s.sort();
            s
        });
    }
    assert!(reqs.len() <= TRANSFERS * sets.len(), "{reqs:#?}");

    // Base layers were mounted (201), not uploaded.
    let mut base_layers = BTreeSet::new();
    let index = read_blob_json(&out_dir, &digest);
    for child in index["manifests"].as_array().unwrap() {
        let man = read_blob_json(&out_dir, child["digest"].as_str().unwrap());
        base_layers.insert(man["layers"][0]["digest"].as_str().unwrap().to_string());
    }
    let build_reqs = proxy.requests()[first..].to_vec();
    let mounts = build_reqs
        .iter()
        .filter(|r| {
            r.method == "POST" && r.path.ends_with("/app/blobs/uploads/") && r.status == Some(201)
        })
        .count();
    assert_eq!(mounts, base_layers.len(), "{build_reqs:#?}");
    assert_registry_side_clean(&proxy);
}

/// A layout built on `host/base:1.0`, then `base` denied to new tokens: a
/// push to another repository asks to mount from `base`, is refused, and
/// falls back to uploading (whether the gate answers the mount with 401 or
/// turns it into a plain upload start).
fn refused_mount_falls_back_to_upload(mode: MountDenied) {
    let (reg, proxy) = gated(Gate::new(USER, PASSWORD).mount_denied(mode));
    let host = proxy.host_port();
    let env = Env::new();
    env.basic_login(&host, USER, PASSWORD);
    let out = push_base(&env, &host, "base:1.0");
    assert!(out.status.success(), "{}", stderr(&out));
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let out_dir = env.path("out");
    let out = output(
        env.imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&out_dir))
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = digest_line(&stdout(&out));

    proxy.deny_repository("base");
    let first = proxy.requests().len();
    let out = output(
        env.imgc()
            .arg("push")
            .arg(oci_ref(&out_dir, "2.1.0"))
            .arg(format!("{host}/other:2.1.0"))
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest_line(&stdout(&out)), digest);
    assert_eq!(digest_on(&reg, "other:2.1.0"), digest);
    assert_no_secrets(&proxy, &stderr(&out));
    let reqs = proxy.requests()[first..].to_vec();
    let mounted = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.status == Some(201))
        .count();
    assert_eq!(mounted, 0, "{reqs:#?}");
    // The mounts asked for pull on `base`; the tokens did not grant it.
    let mount_tokens: Vec<_> = proxy
        .token_requests()
        .into_iter()
        .filter(|t| t.scopes.iter().any(|s| s == "repository:base:pull"))
        .filter(|t| t.scopes.iter().any(|s| s == "repository:other:pull,push"))
        .collect();
    assert!(!mount_tokens.is_empty(), "{:#?}", proxy.token_requests());
    for t in &mount_tokens {
        assert_eq!(t.granted, ["repository:other:pull,push"], "{t:#?}");
    }
    let refused_posts = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.status == Some(401) && r.auth.is_some())
        .count();
    match mode {
        MountDenied::Upload => {
            assert!(!proxy.mounts_turned_into_uploads().is_empty());
            assert_eq!(refused_posts, 0, "{reqs:#?}");
        }
        MountDenied::Unauthorized => {
            assert!(proxy.mounts_turned_into_uploads().is_empty());
            assert!(refused_posts >= 1, "{reqs:#?}");
        }
    }
    assert_registry_side_clean(&proxy);
}

#[test]
fn a_mount_refused_with_401_falls_back_to_upload() {
    refused_mount_falls_back_to_upload(MountDenied::Unauthorized);
}

#[test]
fn a_mount_answered_as_a_plain_upload_start_uploads() {
    refused_mount_falls_back_to_upload(MountDenied::Upload);
}

#[test]
fn tokens_expiring_mid_push_are_fetched_again() {
    // One transfer at a time: the 6th request finds its token expired,
    // imgc fetches a new one once, and the push goes on.
    let (reg, proxy) = gated(Gate::new(USER, PASSWORD).revoke_after(6));
    let host = proxy.host_port();
    let env = Env::new();
    env.basic_login(&host, USER, PASSWORD);
    let base = example_dir("multi-arch").join("base");
    let out = output(
        env.imgc()
            .arg("push")
            .arg(oci_ref(&base, "1.0"))
            .arg(format!("{host}/base:1.0"))
            .args(["--transfers", "1"])
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest_on(&reg, "base:1.0"), digest_line(&stdout(&out)));
    let tokens = proxy.token_requests();
    assert_eq!(tokens.len(), 2, "{tokens:#?}");
    assert!(tokens.iter().all(|t| t.status == 200));
    let refused: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.status == Some(401))
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert_eq!(refused[0].auth, None);
    assert_eq!(refused[1].auth.as_deref(), Some("Bearer"));
    assert_no_secrets(&proxy, &stderr(&out));
    assert_registry_side_clean(&proxy);

    // Concurrent transfers, tokens expiring in the middle of the uploads.
    let (reg, proxy) = gated(Gate::new(USER, PASSWORD).revoke_after(12));
    let host = proxy.host_port();
    env.basic_login(&host, USER, PASSWORD);
    let out = push_base(&env, &host, "base:1.0");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest_on(&reg, "base:1.0"), digest_line(&stdout(&out)));
    let refused_tokens = proxy
        .requests()
        .iter()
        .filter(|r| r.status == Some(401) && r.auth.as_deref() == Some("Bearer"))
        .count();
    assert!(refused_tokens >= 1, "{:#?}", proxy.requests());
    assert_no_secrets(&proxy, &stderr(&out));
    assert_registry_side_clean(&proxy);
}

/// imgc's concurrent transfers should share one token per scope set (and one
/// failed login per command with wrong credentials).
#[test]
fn concurrent_transfers_fetch_one_token_per_scope_set() {
    let (_reg, proxy) = gated(Gate::new(USER, PASSWORD));
    let host = proxy.host_port();
    let env = Env::new();
    env.basic_login(&host, USER, PASSWORD);
    let out = push_base(&env, &host, "base:1.0");
    assert!(out.status.success(), "{}", stderr(&out));
    let tokens = proxy.token_requests();
    assert_eq!(tokens.len(), 1, "{tokens:#?}\n{:#?}", proxy.requests());

    let bad = Env::new();
    bad.basic_login(&host, USER, "wrong-Pa55word-k2");
    let before = proxy.token_requests().len();
    let first = proxy.requests().len();
    let out = run_fails(
        bad.imgc()
            .arg("push")
            .arg(oci_ref(&example_dir("multi-arch").join("base"), "1.0"))
            .arg(format!("{host}/other:1.0"))
            .args(insecure(&host)),
    );
    let tried = proxy.token_requests()[before..].to_vec();
    assert_eq!(
        tried.len(),
        1,
        "{tried:#?}\n{:#?}\n{}",
        &proxy.requests()[first..],
        stderr(&out)
    );
}

/// A token server briefly unavailable (503, then a 429 with Retry-After):
/// imgc retries as it does for the registry's own 503s.
#[test]
fn a_token_endpoint_hiccup_is_retried() {
    let reg = Registry::start();
    let proxy = Proxy::start_with_gate(
        SocketAddr::from(([127, 0, 0, 1], reg.port())),
        vec![
            Rule::status(503).path("/token"),
            Rule::too_many_requests(1).path("/token"),
        ],
        Gate::new(USER, PASSWORD),
    );
    let host = proxy.host_port();
    let env = Env::new();
    env.basic_login(&host, USER, PASSWORD);
    let base = example_dir("multi-arch").join("base");
    let out = output(
        env.imgc()
            .arg("push")
            .arg(oci_ref(&base, "1.0"))
            .arg(format!("{host}/base:1.0"))
            .args(["--transfers", "1"])
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest_on(&reg, "base:1.0"), digest_line(&stdout(&out)));
    assert!(proxy.rules().iter().all(|r| r.times == 0));
    assert!(stderr(&out).contains("retry"), "{}", stderr(&out));
    assert_no_secrets(&proxy, &stderr(&out));
}
