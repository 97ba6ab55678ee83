//! A fault-injecting HTTP/1.1 proxy for registry tests, std only.
//!
//! [`Proxy`] sits on a free 127.0.0.1 port in front of a plain-HTTP registry
//! and forwards every request, except those a [`Rule`] picks for a fault:
//! an injected status (503, 429 + Retry-After), a connection cut mid-upload,
//! a response that never comes, or a response body with one byte flipped.
//! Every request is recorded ([`Proxy::requests`]). Bodies are streamed, never
//! held whole in memory, so multi-hundred-MB blobs pass through fine.
//!
//! With a [`Gate`] ([`Proxy::start_with_gate`]) the proxy also plays a
//! bearer-token auth server in front of the (auth-less) registry: it answers
//! `/v2/` requests without a good `Authorization: Bearer` token with a `401`
//! challenge, serves the token endpoint itself, checks every token's scopes,
//! and strips `Authorization` before forwarding. See [`Gate`].
//!
//! [`RawTap`] pipes bytes both ways without parsing anything and notes, per
//! connection, whether the client opened with a TLS handshake or plain HTTP.
//!
//! Both stop accepting on drop and shut down the connections they still hold,
//! so no thread they started can keep a test waiting.
//!
//! One header is changed in flight: a request's `Expect: 100-continue` is
//! answered by the proxy itself (`100 Continue` to the client) and not
//! forwarded, since the proxy reads the body either way.
#![allow(dead_code)]

use base64::Engine as _;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

/// A request or response head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// Bodies are copied in pieces of this size.
const CHUNK: usize = 64 * 1024;

// ------------------------------------------------------------ rules

/// What to do to a request a [`Rule`] picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer with this status (and `Content-Length: 0`) without forwarding.
    /// The request body is read and thrown away first, so the connection
    /// stays usable.
    Status {
        code: u16,
        headers: Vec<(String, String)>,
    },
    /// Forward the request head and the first n bytes of the body (as sent
    /// on the wire), then close both connections: a reset mid-upload.
    DropRequestAfter(u64),
    /// Forward the whole request and wait for the registry's response head,
    /// then close the client connection without sending it anything. The
    /// registry has done the work; the client never hears of it.
    DropResponse,
    /// Forward the whole request, wait for the registry's response head, then
    /// send the client nothing for this long, then close: a stalled server.
    Stall(std::time::Duration),
    /// Forward, but flip the lowest bit of one byte of the response body
    /// (the middle byte when the length is known, else the first one). The
    /// length stays the same.
    CorruptBody,
    /// Forward, but send the response body slowly and steadily, spread over
    /// this long (small pieces, never a pause of more than a tenth of it).
    Trickle(std::time::Duration),
    /// Forward, send the head and the first half of the body, then nothing
    /// for this long, then close: a download that stalls midway.
    StallBody(std::time::Duration),
    /// Forward, but point the response's `Location` header at this
    /// host:port (plain HTTP), keeping its path and query: an upload that a
    /// registry sends to another host.
    RewriteLocation(String),
    /// Forward a tag-list GET without its query, then answer with one page
    /// of the (sorted) tags the registry listed: at most `per_page`, after
    /// the query's `last`, with a `Link: <…>; rel="next"` when more are left
    /// (as distribution 3 pages; the 2.8 registry here ignores `n`). The
    /// link points at `link_host` (plain HTTP) when given, else is relative.
    PageTags {
        per_page: usize,
        link_host: Option<String>,
    },
}

/// Which requests get a fault, and how many of them. A request is matched
/// against the rules in order; the first one that matches and is not spent
/// applies (and `times` goes down by one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The method, any case; None matches every method.
    pub method: Option<String>,
    /// A substring of the path (without the query); None matches every path.
    pub path_contains: Option<String>,
    /// How many matching requests get the fault; then the rule is spent.
    pub times: usize,
    /// How many matching requests pass untouched before the fault applies.
    pub skip: usize,
    pub action: Action,
}

impl Rule {
    /// A rule for every request, once. Narrow it with [`Rule::method`],
    /// [`Rule::path`] and [`Rule::times`].
    pub fn new(action: Action) -> Rule {
        Rule {
            method: None,
            path_contains: None,
            times: 1,
            skip: 0,
            action,
        }
    }

    /// Answer `code` (no body) instead of forwarding.
    pub fn status(code: u16) -> Rule {
        Rule::new(Action::Status {
            code,
            headers: Vec::new(),
        })
    }

    /// Answer `code` with these extra headers instead of forwarding.
    pub fn status_with(code: u16, headers: &[(&str, &str)]) -> Rule {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Rule::new(Action::Status { code, headers })
    }

    /// Answer `429 Too Many Requests` with `Retry-After: secs`.
    pub fn too_many_requests(retry_after_secs: u64) -> Rule {
        Rule::status_with(429, &[("Retry-After", &retry_after_secs.to_string())])
    }

    /// See [`Action::DropRequestAfter`].
    pub fn drop_request_after(body_bytes: u64) -> Rule {
        Rule::new(Action::DropRequestAfter(body_bytes))
    }

    /// See [`Action::DropResponse`].
    pub fn drop_response() -> Rule {
        Rule::new(Action::DropResponse)
    }

    /// See [`Action::Stall`].
    pub fn stall(for_how_long: std::time::Duration) -> Rule {
        Rule::new(Action::Stall(for_how_long))
    }

    /// See [`Action::CorruptBody`].
    pub fn corrupt_body() -> Rule {
        Rule::new(Action::CorruptBody)
    }

    /// Only requests with this method (any case).
    pub fn method(mut self, method: &str) -> Rule {
        self.method = Some(method.to_string());
        self
    }

    /// Only requests whose path (without the query) contains this.
    pub fn path(mut self, path_contains: &str) -> Rule {
        self.path_contains = Some(path_contains.to_string());
        self
    }

    /// Fault this many matching requests (default 1).
    pub fn times(mut self, times: usize) -> Rule {
        self.times = times;
        self
    }

    /// Fault every matching request, never running out.
    pub fn always(self) -> Rule {
        self.times(usize::MAX)
    }

    /// Let the first `n` matching requests through untouched.
    pub fn after(mut self, n: usize) -> Rule {
        self.skip = n;
        self
    }

    /// See [`Action::Trickle`].
    pub fn trickle(over: std::time::Duration) -> Rule {
        Rule::new(Action::Trickle(over))
    }

    /// See [`Action::StallBody`].
    pub fn stall_body(for_how_long: std::time::Duration) -> Rule {
        Rule::new(Action::StallBody(for_how_long))
    }

    /// See [`Action::RewriteLocation`].
    pub fn rewrite_location(host_port: &str) -> Rule {
        Rule::new(Action::RewriteLocation(host_port.to_string()))
    }

    /// See [`Action::PageTags`]; for every tag-list GET.
    pub fn page_tags(per_page: usize, link_host: Option<&str>) -> Rule {
        Rule::new(Action::PageTags {
            per_page,
            link_host: link_host.map(str::to_string),
        })
        .method("GET")
        .path("/tags/list")
        .always()
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.times > 0
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub method: String,
    /// The request target without its query string.
    pub path: String,
    /// The query string (after `?`), empty without one.
    pub query: String,
    /// The status the client was sent; None when it got no response
    /// (connection dropped, or not answered yet).
    pub status: Option<u16>,
    /// A rule applied to this request.
    pub faulted: bool,
    /// The scheme of the request's `Authorization` header ("Basic",
    /// "Bearer", ...), None without one. (Under a [`Gate`] the header is
    /// stripped before forwarding; this is what the client sent.)
    pub auth: Option<String>,
}

// ------------------------------------------------------------ shared state

/// The connections a listener still holds, to shut them down on drop.
#[derive(Default)]
struct Conns {
    next_id: AtomicU64,
    open: Mutex<OpenConns>,
}

#[derive(Default)]
struct OpenConns {
    /// Set on drop: a connection added later is shut down at once.
    closed: bool,
    by_id: BTreeMap<u64, Vec<TcpStream>>,
}

impl Conns {
    fn add(&self, streams: &[&TcpStream]) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let clones: Vec<TcpStream> = streams.iter().filter_map(|s| s.try_clone().ok()).collect();
        let mut open = lock(&self.open);
        if open.closed {
            for s in &clones {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        open.by_id.insert(id, clones);
        id
    }

    fn remove(&self, id: u64) {
        lock(&self.open).by_id.remove(&id);
    }

    fn shutdown_all(&self) {
        let mut open = lock(&self.open);
        open.closed = true;
        for s in open.by_id.values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A mutex lock that shrugs off poisoning (a panicking connection thread must
/// not break the test that asks for the records).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts connections on a fresh 127.0.0.1 port until `stop` is set, running
/// `handle` on a thread per connection.
struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Conns>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start<F>(handle: F) -> Listener
    where
        F: Fn(TcpStream, &Conns) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        Listener::start_on(listener, handle)
    }

    fn start_on<F>(listener: TcpListener, handle: F) -> Listener
    where
        F: Fn(TcpStream, &Conns) + Send + Sync + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Conns::default());
        let handle = Arc::new(handle);
        let thread = {
            let (stop, conns) = (stop.clone(), conns.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let (handle, conns) = (handle.clone(), conns.clone());
                    thread::spawn(move || handle(client, &conns));
                }
            })
        };
        Listener {
            addr,
            stop,
            conns,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop` (if that fails, leave the
        // thread be rather than wait for it).
        if TcpStream::connect(self.addr).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        self.conns.shutdown_all();
    }
}

// ------------------------------------------------------------ Proxy

#[derive(Default)]
struct ProxyState {
    rules: Mutex<Vec<Rule>>,
    records: Mutex<Vec<Record>>,
    gate: Option<GateState>,
}

impl ProxyState {
    /// Records the request; returns its index and the fault to apply, if any.
    fn begin(&self, method: &str, target: &str, auth: Option<String>) -> (usize, Option<Action>) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let action = lock(&self.rules)
            .iter_mut()
            .find(|r| r.matches(method, path))
            .and_then(|r| {
                if r.skip > 0 {
                    r.skip -= 1;
                    return None;
                }
                r.times -= 1;
                Some(r.action.clone())
            });
        let mut records = lock(&self.records);
        records.push(Record {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            status: None,
            faulted: action.is_some(),
            auth,
        });
        (records.len() - 1, action)
    }

    fn set_status(&self, index: usize, code: u16) {
        lock(&self.records)[index].status = Some(code);
    }
}

/// The fault-injecting HTTP/1.1 proxy. See the module docs.
pub struct Proxy {
    state: Arc<ProxyState>,
    listener: Listener,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream` (plain
    /// HTTP), applying `rules`.
    pub fn start(upstream: SocketAddr, rules: Vec<Rule>) -> Proxy {
        Proxy::start_inner(upstream, rules, None)
    }

    /// Like [`Proxy::start`], with a bearer-token [`Gate`] in front of the
    /// registry. Rules are matched first (so they can fault the token
    /// endpoint too); a request no `Status`/`DropRequestAfter` rule answered
    /// then goes through the gate.
    pub fn start_with_gate(upstream: SocketAddr, rules: Vec<Rule>, gate: Gate) -> Proxy {
        Proxy::start_inner(upstream, rules, Some(gate))
    }

    fn start_inner(upstream: SocketAddr, rules: Vec<Rule>, gate: Option<Gate>) -> Proxy {
        // Bound first, so the gate knows its realm before any request comes.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            rules: Mutex::new(rules),
            records: Mutex::default(),
            gate: gate.map(|g| GateState::new(g, addr)),
        });
        let listener = {
            let state = state.clone();
            Listener::start_on(listener, move |client, conns| {
                let Ok(up) = TcpStream::connect(upstream) else {
                    return; // dropping `client` closes it
                };
                let id = conns.add(&[&client, &up]);
                let _ = serve_connection(client, up, &state);
                conns.remove(id);
            })
        };
        Proxy { state, listener }
    }

    /// Where the proxy listens: use "127.0.0.1:PORT" as the registry host.
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr
    }

    /// "127.0.0.1:PORT".
    pub fn host_port(&self) -> String {
        self.addr().to_string()
    }

    /// Adds a rule after the existing ones.
    pub fn add_rule(&self, rule: Rule) {
        lock(&self.state.rules).push(rule);
    }

    /// The rules as they stand (`times` counts down as they apply).
    pub fn rules(&self) -> Vec<Rule> {
        lock(&self.state.rules).clone()
    }

    /// Every request seen so far, in the order they arrived.
    pub fn requests(&self) -> Vec<Record> {
        lock(&self.state.records).clone()
    }

    /// How many requests had this method (any case; "" for any) and a path
    /// containing `path_contains` ("" for any).
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        lock(&self.state.records)
            .iter()
            .filter(|r| method.is_empty() || r.method.eq_ignore_ascii_case(method))
            .filter(|r| r.path.contains(path_contains))
            .count()
    }

    /// How many requests got a fault.
    pub fn faulted(&self) -> usize {
        lock(&self.state.records)
            .iter()
            .filter(|r| r.faulted)
            .count()
    }

    fn gate(&self) -> &GateState {
        self.state
            .gate
            .as_ref()
            .expect("this proxy has no gate (use Proxy::start_with_gate)")
    }

    /// The gate's realm URL, as its challenges name it.
    pub fn realm(&self) -> String {
        self.gate().realm.clone()
    }

    /// Every request to the gate's token endpoint so far, in order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        lock(&self.gate().token_requests).clone()
    }

    /// Registry-facing requests (everything but the token endpoint) whose
    /// request line or headers held the gate's password, the base64 of
    /// `user:password`, or its identity token: "METHOD path" each. Should
    /// stay empty.
    pub fn secret_leaks(&self) -> Vec<String> {
        lock(&self.gate().leaks).clone()
    }

    /// From now on, tokens grant nothing on `repository` (tokens issued
    /// before keep what they had).
    pub fn deny_repository(&self, repository: &str) {
        lock(&self.gate().denied).insert(repository.to_string());
    }

    /// Cross-repository mounts the gate turned into plain upload starts
    /// ([`MountDenied::Upload`]): "from -> path" each.
    pub fn mounts_turned_into_uploads(&self) -> Vec<String> {
        lock(&self.gate().rewritten).clone()
    }
}

/// Serves one client connection over one upstream connection, request after
/// request, until either side closes (or a fault closes both).
fn serve_connection(client: TcpStream, up: TcpStream, state: &ProxyState) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let mut client_in = BufReader::with_capacity(CHUNK, client.try_clone()?);
    let mut client_out = client;
    let mut up_in = BufReader::with_capacity(CHUNK, up.try_clone()?);
    let mut up_out = up;

    while let Some(mut req) = read_head(&mut client_in)? {
        let (method, target) = req.request_line()?;
        let path = target.split('?').next().unwrap_or_default().to_string();
        let auth = req
            .header("authorization")
            .and_then(|v| v.split_whitespace().next())
            .map(str::to_string);
        let (index, action) = state.begin(&method, &target, auth);
        let body = req.request_framing();
        let client_wants_close = req.has_token("connection", "close");
        if req.has_token("expect", "100-continue") {
            client_out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }

        match action {
            Some(Action::Status { code, headers }) => {
                copy_body(&mut client_in, &mut io::sink(), body, None)?;
                let mut head = format!("HTTP/1.1 {code} {}\r\n", reason(code));
                for (k, v) in &headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("Content-Length: 0\r\n");
                if client_wants_close {
                    head.push_str("Connection: close\r\n");
                }
                head.push_str("\r\n");
                state.set_status(index, code);
                client_out.write_all(head.as_bytes())?;
                if client_wants_close {
                    return Ok(());
                }
                continue;
            }
            Some(Action::DropRequestAfter(n)) => {
                req.write_to(&mut up_out, &["expect"])?;
                let mut cut = Cutoff {
                    inner: &mut up_out,
                    left: n,
                };
                let _ = copy_body(&mut client_in, &mut cut, body, None);
                let _ = up_out.flush();
                return Ok(()); // dropping the streams closes both connections
            }
            _ => {}
        }

        if let Some(gate) = &state.gate {
            let answer = if gate.is_token_endpoint(&path) {
                let mut raw = Limited {
                    buf: Vec::new(),
                    limit: MAX_HEAD,
                };
                copy_body(&mut client_in, &mut raw, body, None)?;
                let chunked = body == Framing::Chunked;
                Some(gate.token_endpoint(&method, &target, &req, &raw.buf, chunked))
            } else {
                match gate.check(&method, &target, &path, &req) {
                    Verdict::Answer(a) => {
                        copy_body(&mut client_in, &mut io::sink(), body, None)?;
                        Some(a)
                    }
                    Verdict::Forward { target: rewritten } => {
                        if let Some(t) = rewritten {
                            req.first_line = req.first_line.replacen(&target, &t, 1);
                        }
                        req.headers
                            .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
                        None
                    }
                }
            };
            if let Some(mut a) = answer {
                if action == Some(Action::DropResponse) {
                    return Ok(());
                }
                if action == Some(Action::CorruptBody) && !a.body.is_empty() {
                    let mid = a.body.len() / 2;
                    a.body[mid] ^= 1;
                }
                let mut head = format!("HTTP/1.1 {} {}\r\n", a.code, reason(a.code));
                for (k, v) in &a.headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str(&format!("Content-Length: {}\r\n", a.body.len()));
                if client_wants_close {
                    head.push_str("Connection: close\r\n");
                }
                head.push_str("\r\n");
                state.set_status(index, a.code);
                client_out.write_all(head.as_bytes())?;
                // A response to HEAD has no body (its Content-Length still
                // says how long a GET's would be).
                if !method.eq_ignore_ascii_case("HEAD") {
                    client_out.write_all(&a.body)?;
                }
                client_out.flush()?;
                if client_wants_close {
                    return Ok(());
                }
                continue;
            }
        }

        if let Some(Action::PageTags { .. }) = &action {
            req.first_line = req.first_line.replacen(&target, &path, 1);
        }
        // Forward the request. Should the registry stop reading (it answered
        // early and closed), keep draining the client and still read the
        // answer it sent.
        let mut upstream = Lenient {
            inner: &mut up_out,
            failed: false,
        };
        req.write_to(&mut upstream, &["expect"])?;
        copy_body(&mut client_in, &mut upstream, body, None)?;

        // Read the answer, passing interim 1xx responses on.
        let resp = loop {
            let resp = read_head(&mut up_in)?.ok_or_else(|| eof("upstream closed"))?;
            let code = resp.status_code()?;
            if (100..200).contains(&code) && code != 101 {
                if action != Some(Action::DropResponse) {
                    resp.write_to(&mut client_out, &[])?;
                }
                continue;
            }
            break resp;
        };
        if action == Some(Action::DropResponse) {
            return Ok(());
        }
        if let Some(Action::Stall(d)) = &action {
            thread::sleep(*d);
            return Ok(());
        }
        let code = resp.status_code()?;
        let framing = resp.response_framing(&method, code);
        let flip_at = match (&action, framing) {
            (Some(Action::CorruptBody), Framing::Length(n)) => Some(n / 2),
            (Some(Action::CorruptBody), _) => Some(0),
            _ => None,
        };
        state.set_status(index, code);
        if let (
            Some(Action::PageTags {
                per_page,
                link_host,
            }),
            200,
        ) = (&action, code)
        {
            let mut raw = Limited {
                buf: Vec::new(),
                limit: 16 << 20,
            };
            copy_body(&mut up_in, &mut raw, framing, None)?;
            let page = tag_page(&raw.buf, (&path, &target), *per_page, link_host.as_deref());
            client_out.write_all(&page)?;
            client_out.flush()?;
            if client_wants_close || framing == Framing::UntilClose {
                return Ok(());
            }
            continue;
        }
        let mut resp = resp;
        if let Some(Action::RewriteLocation(to)) = &action {
            for (k, v) in resp.headers.iter_mut() {
                if k.eq_ignore_ascii_case("location") {
                    *v = relocate(v, to);
                }
            }
        }
        resp.write_to(&mut client_out, &[])?;
        match (&action, framing) {
            (Some(Action::Trickle(over)), Framing::Length(n)) => {
                let mut paced = Paced::new(&mut client_out, n, *over);
                copy_body(&mut up_in, &mut paced, framing, None)?;
            }
            (Some(Action::StallBody(d)), Framing::Length(n)) => {
                let mut half = Cutoff {
                    inner: &mut client_out,
                    left: n / 2,
                };
                let _ = copy_body(&mut up_in, &mut half, framing, None);
                let _ = client_out.flush();
                thread::sleep(*d);
                return Ok(());
            }
            _ => copy_body(&mut up_in, &mut client_out, framing, flip_at)?,
        }
        client_out.flush()?;

        if client_wants_close
            || resp.has_token("connection", "close")
            || framing == Framing::UntilClose
        {
            return Ok(());
        }
    }
    Ok(())
}

// ------------------------------------------------------------ bearer gate

/// What the gate answers to a cross-repository mount
/// (`POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<src>`) whose token
/// grants push on `<repo>` but not pull on `<src>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountDenied {
    /// `401` with a challenge naming both scopes, as distribution does with
    /// token auth (it adds `repository:<src>:pull` to the access it checks).
    Unauthorized,
    /// Forward it as a plain upload start (`mount` and `from` dropped), so
    /// the registry answers `202 Accepted`: what the OCI distribution spec
    /// asks of a registry that cannot mount.
    Upload,
}

/// A bearer-token gate, see [`Proxy::start_with_gate`]. Build one with
/// [`Gate::new`] and the builder methods.
///
/// - `/v2/…` without `Authorization: Bearer <token>` of a token it issued
///   and still honours, or with a token whose scopes do not cover the
///   request, gets `401` and `WWW-Authenticate: Bearer
///   realm="http://<host:port><realm_path>",service="<service>",scope="…"`
///   (`error="invalid_token"` / `"insufficient_scope"` when a token was
///   sent). The repository and actions come from the path and method:
///   GET/HEAD need `pull`, POST/PUT/PATCH `pull,push`, DELETE `delete`; a
///   mount also needs `pull` on its `from` repository (see [`MountDenied`]).
///   `GET /v2/` (and `_catalog`) only needs a valid token. Other paths are
///   forwarded untouched.
/// - `GET <realm_path>?service=…&scope=…` with HTTP basic `user:password`
///   answers `{"token": …, "expires_in": 300}` granting every scope asked
///   (minus denied repositories); wrong credentials get `401`; no
///   credentials get a pull-only token when `anonymous_pull` is set, else
///   `401`. A `service` other than the gate's gets `400`.
/// - `POST <realm_path>` with the form `grant_type=refresh_token&
///   refresh_token=<identity token>&service=…&scope=…` (or
///   `grant_type=password&username=…&password=…`) answers
///   `{"access_token": …, "expires_in": 300}`; a wrong refresh token or
///   password gets `401`.
/// - The `Authorization` header is stripped before a request is forwarded
///   to the registry.
#[derive(Debug, Clone)]
pub struct Gate {
    pub user: String,
    pub password: String,
    /// The refresh token accepted by `POST <realm_path>`; None refuses the
    /// refresh-token grant.
    pub identity_token: Option<String>,
    /// Whether a token request without credentials gets pull access.
    pub anonymous_pull: bool,
    /// Where the token endpoint is served ("/token").
    pub realm_path: String,
    /// The host name in the realm (with the proxy's port); None: the
    /// proxy's own "127.0.0.1". The token endpoint is served by the proxy
    /// whatever this says, so "localhost" makes a realm on "another host"
    /// (to a client comparing host:port strings) that still works.
    pub realm_hostname: Option<String>,
    /// The `service` of the challenges ("test-registry").
    pub service: String,
    /// See [`MountDenied`] (default `Unauthorized`).
    pub mount_denied: MountDenied,
    /// When the n-th `/v2/` request is checked (counting from 1), every
    /// token that has been used at least once stops being honoured (once):
    /// old tokens expiring mid-push. Tokens not used yet are young and stay
    /// good (a real token never expires before its first use). None: tokens
    /// never expire.
    pub revoke_after: Option<usize>,
    /// Basic auth instead of tokens (see [`Gate::basic`]).
    pub basic: bool,
    /// The realm URL of challenges, instead of the proxy's (see [`Gate::realm_url`]).
    pub realm_url: Option<String>,
}

impl Gate {
    /// A gate for one user, no identity token, no anonymous pull, realm
    /// `http://<proxy>/token`, service "test-registry".
    pub fn new(user: &str, password: &str) -> Gate {
        crate::support::register_login(user, password);
        Gate {
            user: user.to_string(),
            password: password.to_string(),
            identity_token: None,
            anonymous_pull: false,
            realm_path: "/token".to_string(),
            realm_hostname: None,
            service: "test-registry".to_string(),
            mount_denied: MountDenied::Unauthorized,
            revoke_after: None,
            basic: false,
            realm_url: None,
        }
    }

    /// HTTP basic auth instead of tokens: `/v2/` requests without
    /// `Authorization: Basic <user:password>` get `401` with
    /// `WWW-Authenticate: Basic realm="imgc-test"`.
    pub fn basic(mut self) -> Gate {
        self.basic = true;
        self
    }

    /// Name this URL as the realm in challenges (the proxy still serves the
    /// token endpoint at its own `realm_path`, whatever the URL says).
    pub fn realm_url(mut self, url: &str) -> Gate {
        self.realm_url = Some(url.to_string());
        self
    }

    /// Also accept this refresh token (docker's `identitytoken`).
    pub fn identity_token(mut self, token: &str) -> Gate {
        crate::support::register_secret(token);
        self.identity_token = Some(token.to_string());
        self
    }

    /// Give pull-only tokens to requests without credentials.
    pub fn anonymous_pull(mut self) -> Gate {
        self.anonymous_pull = true;
        self
    }

    /// Name this host in the realm (see [`Gate::realm_hostname`]).
    pub fn realm_hostname(mut self, host: &str) -> Gate {
        self.realm_hostname = Some(host.to_string());
        self
    }

    /// See [`MountDenied`].
    pub fn mount_denied(mut self, m: MountDenied) -> Gate {
        self.mount_denied = m;
        self
    }

    /// See [`Gate::revoke_after`].
    pub fn revoke_after(mut self, requests: usize) -> Gate {
        self.revoke_after = Some(requests);
        self
    }
}

/// The credentials a token request came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCreds {
    /// None at all (anonymous).
    None,
    /// HTTP basic auth on a GET; `ok`: user and password were right.
    Basic { user: String, ok: bool },
    /// A POST with `grant_type=refresh_token`; `ok`: the token was right.
    Refresh { ok: bool },
    /// A POST with `grant_type=password`; `ok`: user and password were right.
    Password { user: String, ok: bool },
    /// Something else (another auth scheme, another grant type, a bad form).
    Other(String),
}

/// One request to the gate's token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub method: String,
    pub service: Option<String>,
    /// The `scope` values asked for, in order.
    pub scopes: Vec<String>,
    pub creds: TokenCreds,
    /// The form's `client_id` (POST only).
    pub client_id: Option<String>,
    /// The status answered.
    pub status: u16,
    /// The token issued, if any.
    pub token: Option<String>,
    /// What the token grants ("repository:<name>:<actions>" each).
    pub granted: Vec<String>,
}

/// A response the proxy writes itself.
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(code: u16, value: &serde_json::Value) -> Answer {
        Answer {
            code,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap(),
        }
    }
}

enum Verdict {
    Answer(Answer),
    /// Forward (the target rewritten if Some).
    Forward {
        target: Option<String>,
    },
}

struct IssuedToken {
    /// repository -> actions.
    access: BTreeMap<String, BTreeSet<String>>,
    /// Sent on a `/v2/` request already.
    used: bool,
    /// Expired by [`Gate::revoke_after`].
    revoked: bool,
}

struct GateState {
    cfg: Gate,
    realm: String,
    issued: AtomicU64,
    tokens: Mutex<BTreeMap<String, IssuedToken>>,
    checked: AtomicU64,
    token_requests: Mutex<Vec<TokenRequest>>,
    denied: Mutex<BTreeSet<String>>,
    leaks: Mutex<Vec<String>>,
    rewritten: Mutex<Vec<String>>,
}

/// (repository, action) pairs a request needs.
type Needs = Vec<(String, String)>;

impl GateState {
    fn new(cfg: Gate, addr: SocketAddr) -> GateState {
        let host = match &cfg.realm_hostname {
            Some(h) => format!("{h}:{}", addr.port()),
            None => addr.to_string(),
        };
        GateState {
            realm: cfg
                .realm_url
                .clone()
                .unwrap_or_else(|| format!("http://{host}{}", cfg.realm_path)),
            cfg,
            issued: AtomicU64::new(0),
            tokens: Mutex::default(),
            checked: AtomicU64::new(0),
            token_requests: Mutex::default(),
            denied: Mutex::default(),
            leaks: Mutex::default(),
            rewritten: Mutex::default(),
        }
    }

    fn is_token_endpoint(&self, path: &str) -> bool {
        path == self.cfg.realm_path
    }

    fn secrets(&self) -> Vec<String> {
        let mut v = vec![
            self.cfg.password.clone(),
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.cfg.user, self.cfg.password)),
        ];
        v.extend(self.cfg.identity_token.clone());
        v.retain(|s| !s.is_empty());
        v
    }

    /// Checks a registry-facing request.
    fn check(&self, method: &str, target: &str, path: &str, req: &Head) -> Verdict {
        // Basic auth carries the secret to the registry side by design.
        if self.cfg.basic && path.starts_with("/v2") {
            return self.check_basic(req);
        }
        // Secrets must never reach the registry's side.
        let mut head = req.first_line.clone();
        for (k, v) in &req.headers {
            head.push_str(&format!("\n{k}: {v}"));
        }
        if self.secrets().iter().any(|s| head.contains(s.as_str())) {
            lock(&self.leaks).push(format!("{method} {path}"));
        }
        let Some(rest) = path.strip_prefix("/v2") else {
            return Verdict::Forward { target: None };
        };
        let n = self.checked.fetch_add(1, Ordering::SeqCst) + 1;
        if self.cfg.revoke_after == Some(n as usize) {
            for t in lock(&self.tokens).values_mut().filter(|t| t.used) {
                t.revoked = true;
            }
        }

        let query = parse_query(target.split_once('?').map(|x| x.1).unwrap_or(""));
        let mut needs: Needs = Vec::new();
        let mut mount_from = None;
        if let Some(repo) = repository_of(rest) {
            let actions: &[&str] = match method.to_ascii_uppercase().as_str() {
                "GET" | "HEAD" => &["pull"],
                "DELETE" => &["delete"],
                _ => &["pull", "push"],
            };
            for a in actions {
                needs.push((repo.clone(), a.to_string()));
            }
            let is_mount =
                method.eq_ignore_ascii_case("POST") && query.iter().any(|(k, _)| k == "mount");
            if is_mount {
                mount_from = query.iter().find(|(k, _)| k == "from").map(|x| x.1.clone());
            }
        }
        let mut all_needs = needs.clone();
        if let Some(src) = &mount_from {
            all_needs.push((src.clone(), "pull".to_string()));
        }

        let bearer = req.header("authorization").and_then(|v| {
            let (scheme, tok) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| tok.trim().to_string())
        });
        let Some(token) = bearer else {
            return Verdict::Answer(self.challenge(&all_needs, None));
        };
        let mut tokens = lock(&self.tokens);
        let Some(issued) = tokens.get_mut(&token).filter(|t| !t.revoked) else {
            return Verdict::Answer(self.challenge(&all_needs, Some("invalid_token")));
        };
        issued.used = true;
        let covers = |(repo, action): &(String, String)| {
            issued
                .access
                .get(repo)
                .is_some_and(|a| a.contains(action) || a.contains("*"))
        };
        if !needs.iter().all(covers) {
            return Verdict::Answer(self.challenge(&all_needs, Some("insufficient_scope")));
        }
        if let Some(src) = mount_from {
            if !covers(&(src.clone(), "pull".to_string())) {
                match self.cfg.mount_denied {
                    MountDenied::Unauthorized => {
                        return Verdict::Answer(
                            self.challenge(&all_needs, Some("insufficient_scope")),
                        );
                    }
                    MountDenied::Upload => {
                        lock(&self.rewritten).push(format!("{src} -> {path}"));
                        return Verdict::Forward {
                            target: Some(path.to_string()),
                        };
                    }
                }
            }
        }
        Verdict::Forward { target: None }
    }

    /// Basic mode: the right `user:password`, or a `401` Basic challenge.
    fn check_basic(&self, req: &Head) -> Verdict {
        let want = format!(
            "Basic {}",
            crate::support::b64(&format!("{}:{}", self.cfg.user, self.cfg.password))
        );
        if req.header("authorization").map(str::trim) == Some(want.as_str()) {
            return Verdict::Forward { target: None };
        }
        let mut a = Answer::json(
            401,
            &serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
        );
        a.headers.push((
            "WWW-Authenticate".into(),
            "Basic realm=\"imgc-test\"".into(),
        ));
        Verdict::Answer(a)
    }

    /// A `401` with the Bearer challenge for `needs`.
    fn challenge(&self, needs: &Needs, error: Option<&str>) -> Answer {
        let mut by_repo: Vec<(String, Vec<String>)> = Vec::new();
        for (repo, action) in needs {
            match by_repo.iter_mut().find(|(r, _)| r == repo) {
                Some((_, actions)) => {
                    if !actions.contains(action) {
                        actions.push(action.clone());
                    }
                }
                None => by_repo.push((repo.clone(), vec![action.clone()])),
            }
        }
        let scope = by_repo
            .iter()
            .map(|(r, a)| format!("repository:{r}:{}", a.join(",")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut value = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm, self.cfg.service
        );
        if !scope.is_empty() {
            value.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(e) = error {
            value.push_str(&format!(",error=\"{e}\""));
        }
        let mut a = Answer::json(
            401,
            &serde_json::json!({"errors": [{
                "code": "UNAUTHORIZED",
                "message": "authentication required",
                "detail": by_repo.iter().map(|(r, a)| serde_json::json!({
                    "Type": "repository", "Name": r, "Action": a.join(",")
                })).collect::<Vec<_>>(),
            }]}),
        );
        a.headers.push(("WWW-Authenticate".into(), value));
        a.headers.push((
            "Docker-Distribution-API-Version".into(),
            "registry/2.0".into(),
        ));
        a
    }

    /// Serves the token endpoint; `body` is the request body as read.
    fn token_endpoint(
        &self,
        method: &str,
        target: &str,
        req: &Head,
        body: &[u8],
        chunked: bool,
    ) -> Answer {
        let mut params = parse_query(target.split_once('?').map(|x| x.1).unwrap_or(""));
        let is_post = method.eq_ignore_ascii_case("POST");
        let mut client_id = None;
        let creds = if is_post {
            if chunked {
                TokenCreds::Other("chunked form".into())
            } else {
                let form = parse_query(&String::from_utf8_lossy(body));
                let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|x| x.1.clone());
                client_id = field("client_id");
                let creds = match field("grant_type").as_deref() {
                    Some("refresh_token") => TokenCreds::Refresh {
                        ok: self.cfg.identity_token.is_some()
                            && field("refresh_token") == self.cfg.identity_token,
                    },
                    Some("password") => {
                        let user = field("username").unwrap_or_default();
                        TokenCreds::Password {
                            ok: user == self.cfg.user
                                && field("password").as_deref() == Some(&self.cfg.password),
                            user,
                        }
                    }
                    g => TokenCreds::Other(format!("grant_type {g:?}")),
                };
                params.extend(
                    form.into_iter()
                        .filter(|(k, _)| k == "service" || k == "scope"),
                );
                creds
            }
        } else {
            match req.header("authorization") {
                None => TokenCreds::None,
                Some(v) => match v.trim().split_once(' ') {
                    Some((s, b64)) if s.eq_ignore_ascii_case("basic") => {
                        let decoded = base64::engine::general_purpose::STANDARD
                            .decode(b64.trim())
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok());
                        match decoded.as_deref().and_then(|d| d.split_once(':')) {
                            Some((u, p)) => TokenCreds::Basic {
                                user: u.to_string(),
                                ok: u == self.cfg.user && p == self.cfg.password,
                            },
                            None => TokenCreds::Other("bad basic credentials".into()),
                        }
                    }
                    _ => TokenCreds::Other("another auth scheme".into()),
                },
            }
        };
        let service = params
            .iter()
            .find(|(k, _)| k == "service")
            .map(|x| x.1.clone());
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            // One `scope` may hold several, space-separated.
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        let mut record = TokenRequest {
            method: method.to_string(),
            service: service.clone(),
            scopes: scopes.clone(),
            creds: creds.clone(),
            client_id,
            status: 0,
            token: None,
            granted: Vec::new(),
        };

        let refused = |code: u16, why: &str| {
            Answer::json(
                code,
                &serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": why}]}),
            )
        };
        let answer = if !method.eq_ignore_ascii_case("GET") && !is_post {
            refused(405, "method not allowed")
        } else if service.as_deref().is_some_and(|s| s != self.cfg.service) {
            refused(400, "unknown service")
        } else {
            let allowed: Option<&[&str]> = match &creds {
                TokenCreds::Basic { ok: true, .. }
                | TokenCreds::Refresh { ok: true }
                | TokenCreds::Password { ok: true, .. } => Some(&["pull", "push", "delete", "*"]),
                TokenCreds::None if self.cfg.anonymous_pull => Some(&["pull"]),
                _ => None,
            };
            match allowed {
                None => refused(401, "authentication failed"),
                Some(allowed) => {
                    let denied = lock(&self.denied).clone();
                    let mut access: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                    for s in &scopes {
                        let Some((kind, rest)) = s.split_once(':') else {
                            continue;
                        };
                        let Some((name, actions)) = rest.rsplit_once(':') else {
                            continue;
                        };
                        if kind != "repository" || denied.contains(name) {
                            continue;
                        }
                        for a in actions.split(',').filter(|a| allowed.contains(a)) {
                            access.entry(name.to_string()).or_default().insert(a.into());
                        }
                    }
                    let n = self.issued.fetch_add(1, Ordering::SeqCst);
                    let token = make_token(n);
                    record.granted = access
                        .iter()
                        .map(|(r, a)| {
                            format!(
                                "repository:{r}:{}",
                                a.iter().cloned().collect::<Vec<_>>().join(",")
                            )
                        })
                        .collect();
                    record.token = Some(token.clone());
                    lock(&self.tokens).insert(
                        token.clone(),
                        IssuedToken {
                            access,
                            used: false,
                            revoked: false,
                        },
                    );
                    let key = if is_post { "access_token" } else { "token" };
                    Answer::json(200, &serde_json::json!({key: token, "expires_in": 300}))
                }
            }
        };
        record.status = answer.code;
        lock(&self.token_requests).push(record);
        answer
    }
}

/// `location` (absolute or a path) moved to `http://<to>`, path and query kept.
fn relocate(location: &str, to: &str) -> String {
    let path = match location.find("://") {
        Some(i) => {
            let rest = &location[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => location,
    };
    format!("http://{to}{path}")
}

/// A whole `200` response: one page of the tag list `body` (see
/// [`Action::PageTags`]) for the request `target` at `path`.
fn tag_page(
    body: &[u8],
    (path, target): (&str, &str),
    per_page: usize,
    link_host: Option<&str>,
) -> Vec<u8> {
    let mut list: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let mut tags: Vec<String> = list["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let n = param("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(per_page)
        .clamp(1, per_page.max(1));
    let after = param("last");
    let rest: Vec<String> = tags
        .into_iter()
        .filter(|t| after.as_ref().is_none_or(|a| t > a))
        .collect();
    let page: Vec<String> = rest.iter().take(n).cloned().collect();
    list["tags"] = serde_json::json!(page);
    let json = serde_json::to_vec(&list).unwrap_or_default();
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n");
    if rest.len() > n {
        let next = format!("{path}?n={n}&last={}", page[n - 1]);
        let next = link_host.map_or(next.clone(), |h| format!("http://{h}{next}"));
        head.push_str(&format!("Link: <{next}>; rel=\"next\"\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", json.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(&json);
    out
}

/// Writes `total` bytes evenly over `over`: in twenty pieces (or more),
/// each sent when its share of the time has come.
struct Paced<W> {
    inner: W,
    total: u64,
    over: std::time::Duration,
    written: u64,
    started: std::time::Instant,
}

impl<W: Write> Paced<W> {
    fn new(inner: W, total: u64, over: std::time::Duration) -> Self {
        Paced {
            inner,
            total: total.max(1),
            over,
            written: 0,
            started: std::time::Instant::now(),
        }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let piece = usize::try_from(self.total / 20)
            .unwrap_or(4096)
            .clamp(1, 4096);
        let n = buf.len().min(piece);
        let due = self.over.mul_f64(self.written as f64 / self.total as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            thread::sleep(wait);
        }
        self.inner.write_all(&buf[..n])?;
        self.inner.flush()?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A token nobody guesses by accident: a counter and a hash of it and the time.
fn make_token(n: u64) -> String {
    use sha2::Digest;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let h = sha2::Sha256::digest(format!("{n}/{now}/{}", std::process::id()));
    let token = format!("gate-{n}-{}", hex::encode(&h[..12]));
    crate::support::register_secret(&token);
    token
}

/// The repository named by a `/v2`-relative path ("/app/blobs/uploads/"),
/// None for `/`, `/_catalog` and paths of no repository.
fn repository_of(rest: &str) -> Option<String> {
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let end = segs
        .iter()
        .position(|s| matches!(*s, "manifests" | "blobs" | "tags" | "referrers"))?;
    (end > 0).then(|| segs[..end].join("/"))
}

/// `a=1&b=2` (form or query), percent-decoded, `+` as space.
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Collects a body up to `limit` bytes; more is an error.
struct Limited {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for Limited {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.buf.len() + buf.len() > self.limit {
            return Err(invalid("token request body too large"));
        }
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ------------------------------------------------------------ HTTP heads and bodies

/// A request or response head: the first line and the header fields.
struct Head {
    first_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (Connection, Expect,
    /// Transfer-Encoding) lists `token`, any case.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn request_line(&self) -> io::Result<(String, String)> {
        let mut parts = self.first_line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(method), Some(target)) => Ok((method.to_string(), target.to_string())),
            _ => Err(invalid(&format!("bad request line {:?}", self.first_line))),
        }
    }

    fn status_code(&self) -> io::Result<u16> {
        self.first_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| invalid(&format!("bad status line {:?}", self.first_line)))
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    fn request_framing(&self) -> Framing {
        if self.has_token("transfer-encoding", "chunked") {
            Framing::Chunked
        } else {
            Framing::Length(self.content_length().unwrap_or(0))
        }
    }

    fn response_framing(&self, method: &str, code: u16) -> Framing {
        if method.eq_ignore_ascii_case("HEAD") || code < 200 || code == 204 || code == 304 {
            Framing::Length(0)
        } else if self.has_token("transfer-encoding", "chunked") {
            Framing::Chunked
        } else if let Some(n) = self.content_length() {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        }
    }

    /// Writes the head, leaving out the named headers.
    fn write_to(&self, w: &mut impl Write, skip: &[&str]) -> io::Result<()> {
        let mut out = format!("{}\r\n", self.first_line);
        for (k, v) in &self.headers {
            if !skip.iter().any(|s| k.eq_ignore_ascii_case(s)) {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str("\r\n");
        w.write_all(out.as_bytes())
    }
}

/// Reads a head; None when the peer closed before sending anything.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut first_line = String::new();
    let mut headers = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            if first_line.is_empty() && total == 0 {
                return Ok(None);
            }
            return Err(eof("connection closed inside a head"));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(invalid("head too large"));
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        if first_line.is_empty() {
            // Empty lines before a request line are allowed (RFC 9112 2.2).
            if !line.is_empty() {
                first_line = line.to_string();
            }
        } else if line.is_empty() {
            return Ok(Some(Head {
                first_line,
                headers,
            }));
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        } else {
            return Err(invalid(&format!("bad header line {line:?}")));
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Copies one body from `r` to `w` as it is on the wire (chunk framing
/// included), flipping the lowest bit of the payload byte at `flip_at`.
fn copy_body(
    r: &mut impl BufRead,
    w: &mut impl Write,
    framing: Framing,
    flip_at: Option<u64>,
) -> io::Result<()> {
    let mut flip_at = flip_at;
    match framing {
        Framing::Length(n) => copy_exact(r, w, n, &mut flip_at),
        Framing::UntilClose => copy_exact(r, w, u64::MAX, &mut flip_at),
        Framing::Chunked => loop {
            let size_line = read_line(r)?;
            w.write_all(&size_line)?;
            let text = String::from_utf8_lossy(&size_line);
            let hex = text.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(hex, 16)
                .map_err(|_| invalid(&format!("bad chunk size {text:?}")))?;
            if size == 0 {
                // Trailer fields, then the empty line.
                loop {
                    let line = read_line(r)?;
                    w.write_all(&line)?;
                    if line == b"\r\n" || line == b"\n" {
                        return Ok(());
                    }
                }
            }
            copy_exact(r, w, size, &mut flip_at)?;
            w.write_all(&read_line(r)?)?; // the CRLF after the data
        },
    }
}

/// Copies n bytes (u64::MAX: until EOF). `flip_at` counts down through the
/// bytes copied; the byte it reaches 0 on gets its lowest bit flipped.
fn copy_exact(
    r: &mut impl BufRead,
    w: &mut impl Write,
    n: u64,
    flip_at: &mut Option<u64>,
) -> io::Result<()> {
    let until_eof = n == u64::MAX;
    let mut left = n;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = r.read(&mut buf[..want])?;
        if got == 0 {
            if until_eof {
                return Ok(());
            }
            return Err(eof("connection closed inside a body"));
        }
        if let Some(at) = *flip_at {
            if at < got as u64 {
                buf[at as usize] ^= 1;
                *flip_at = None;
            } else {
                *flip_at = Some(at - got as u64);
            }
        }
        w.write_all(&buf[..got])?;
        if !until_eof {
            left -= got as u64;
        }
    }
    Ok(())
}

fn read_line(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    r.take(MAX_HEAD as u64).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(eof("connection closed inside a chunked body"));
    }
    Ok(line)
}

/// Passes on the first `left` bytes, then fails: cuts a request short.
struct Cutoff<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Cutoff<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("cut off by the proxy"));
        }
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.inner.write_all(&buf[..n])?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Swallows writes once one has failed, so the client's body can still be
/// drained when the registry stopped reading it.
struct Lenient<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Write for Lenient<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.failed && self.inner.write_all(buf).is_err() {
            self.failed = true;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.failed && self.inner.flush().is_err() {
            self.failed = true;
        }
        Ok(())
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn eof(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg.to_string())
}

// ------------------------------------------------------------ RawTap

/// How a connection through a [`RawTap`] began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// 0x16: a TLS handshake record.
    Tls,
    /// An HTTP method and a space ("GET ", "HEAD ", "PUT ", ...).
    PlainHttp,
    /// Something else.
    Other,
    /// The client closed without sending a byte.
    Nothing,
}

/// A byte pipe in front of a server (TLS or not) that records how each
/// connection opened. See the module docs.
pub struct RawTap {
    openings: Arc<Mutex<Vec<Opening>>>,
    listener: Listener,
}

impl RawTap {
    /// Listens on a free 127.0.0.1 port and pipes each connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> RawTap {
        let openings = Arc::new(Mutex::new(Vec::new()));
        let listener = {
            let openings = openings.clone();
            Listener::start(move |client, conns| {
                let Ok(up) = TcpStream::connect(upstream) else {
                    return;
                };
                let id = conns.add(&[&client, &up]);
                let _ = pipe(client, up, &openings);
                conns.remove(id);
            })
        };
        RawTap { openings, listener }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.addr
    }

    /// "127.0.0.1:PORT".
    pub fn host_port(&self) -> String {
        self.addr().to_string()
    }

    /// How each connection opened, in the order they sent their first bytes.
    pub fn openings(&self) -> Vec<Opening> {
        lock(&self.openings).clone()
    }

    /// Connections whose first byte was 0x16 (TLS handshake).
    pub fn tls_connections(&self) -> usize {
        self.count(Opening::Tls)
    }

    /// Connections that opened with an HTTP method: plain HTTP.
    pub fn plain_http_connections(&self) -> usize {
        self.count(Opening::PlainHttp)
    }

    fn count(&self, kind: Opening) -> usize {
        lock(&self.openings).iter().filter(|o| **o == kind).count()
    }
}

fn pipe(
    mut client: TcpStream,
    mut up: TcpStream,
    openings: &Mutex<Vec<Opening>>,
) -> io::Result<()> {
    // Read enough to tell how the client opens, and note it before anything
    // reaches the server (so it is recorded before any answer comes back).
    let mut first = Vec::new();
    let mut buf = [0u8; 16];
    let opening = loop {
        let n = client.read(&mut buf)?;
        first.extend_from_slice(&buf[..n]);
        if n == 0 || first[0] == 0x16 || first.contains(&b' ') || first.len() >= 8 {
            break classify(&first);
        }
    };
    lock(openings).push(opening);
    up.write_all(&first)?;

    let (mut client_r, mut up_r) = (client.try_clone()?, up.try_clone()?);
    let back = thread::spawn(move || {
        let _ = io::copy(&mut up_r, &mut client);
        let _ = client.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut client_r, &mut up);
    let _ = up.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}

fn classify(first: &[u8]) -> Opening {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    match first.first() {
        None => Opening::Nothing,
        Some(0x16) => Opening::Tls,
        Some(_) => {
            let word = first.split(|b| *b == b' ').next().unwrap_or_default();
            let is_method = first.contains(&b' ') && METHODS.iter().any(|m| m.as_bytes() == word);
            if is_method {
                Opening::PlainHttp
            } else {
                Opening::Other
            }
        }
    }
}
