//! Connections to request spans: each tracked connection's reads and writes are split into the
//! requests and responses they carry (per protocol), each response is paired with the request
//! it answers (in order, as HTTP/1 pipelining requires), and each pair becomes one span —
//! SERVER where the process accepted the connection, CLIENT where it connected. A server span
//! joins the trace its request's `traceparent` names; a client request made by a thread while
//! it serves a request is that server span's child.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock};

use rustc_hash::FxHashMap;

use oxeye_api::{Attributes, Comm, Span, SpanId, SpanKind, StatusCode, TaskContext, TraceId};
use oxeye_ebpf_common::{
    L7Conn, L7Event, L7_CLOSE, L7_READ, PROTO_DNS, PROTO_HTTP, PROTO_REDIS, ROLE_SERVER,
};

use super::http::{self, Head, Piece};
use super::route::Routes;
use super::{dns, redis};

/// One direction of a connection, framed by its protocol.
#[derive(Debug)]
enum Stream {
    Http(http::Stream),
    Dns(dns::Stream),
    // Boxed: it holds a whole head while a command's name is read.
    Redis(Box<redis::Stream>),
}

impl Stream {
    /// Requests (`responses` false) or responses of connection `c`'s protocol.
    fn new(c: &L7Conn, responses: bool) -> Stream {
        match c.proto {
            PROTO_REDIS => Stream::Redis(Box::new(redis::Stream::new(responses))),
            // Datagrams only on a SOCK_DGRAM socket; an unknown type (0) is taken as TCP, as
            // `network.transport` says.
            PROTO_DNS => Stream::Dns(dns::Stream::new(c.sock_type != 2)),
            _ => Stream::Http(http::Stream::new(responses)),
        }
    }

    fn feed(&mut self, data: &[u8], gap: u64, head_req: bool, out: &mut Vec<Piece>) {
        match self {
            Stream::Http(s) => s.feed(data, gap, head_req, out),
            Stream::Dns(s) => s.feed(data, gap, out),
            Stream::Redis(s) => s.feed(data, gap, out),
        }
    }

    fn end_open(&mut self) -> bool {
        match self {
            Stream::Http(s) => s.end_open(),
            Stream::Dns(s) => s.end_open(),
            Stream::Redis(s) => s.end_open(),
        }
    }

    /// Bytes buffered (HTTP heads and lines; the other protocols hold a few hundred at most).
    fn held(&self) -> usize {
        match self {
            Stream::Http(s) => s.held(),
            _ => 0,
        }
    }

    /// Drops a head being buffered (see [`http::Stream::shed`]).
    fn shed(&mut self, out: &mut Vec<Piece>) -> bool {
        match self {
            Stream::Http(s) => s.shed(out),
            _ => false,
        }
    }

    fn in_message(&self) -> bool {
        match self {
            Stream::Http(s) => s.in_message(),
            Stream::Dns(s) => s.in_message(),
            Stream::Redis(s) => s.in_message(),
        }
    }
}

/// A string made once per place it is written: a request span's attribute keys (and a few
/// values) are `Arc` clones — an atomic increment, no allocation, no copy, nothing freed with
/// the span.
macro_rules! k {
    ($s:literal) => {{
        static K: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from($s));
        Arc::clone(&K)
    }};
}

/// Values from a short list of words (methods, versions), shared as [`k!`] shares keys.
static WORDS: LazyLock<FxHashMap<&'static str, Arc<str>>> = LazyLock::new(|| {
    [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "_OTHER",
        "1.0", "1.1",
    ]
    .into_iter()
    .map(|k| (k, Arc::from(k)))
    .collect()
});

/// One of [`WORDS`] as a value.
fn word(w: &'static str) -> oxeye_api::Value {
    oxeye_api::Value::Str(WORDS.get(w).cloned().unwrap_or_else(|| Arc::from(w)))
}

/// Requests waiting for their responses on one connection at most: deeper ones are counted and
/// not traced, but hold a place (up to 4x this) so that their responses pair with them.
const MAX_PENDING: usize = 64;
/// Bytes of unfinished heads held over all connections at most: past it, the head that grew
/// is given up (its span marked truncated), so a flood of half-sent heads on many connections
/// costs at most this much besides each connection's fixed state.
const HEAD_BUDGET: usize = 16 << 20;
/// How long a DNS query waits for its response (a lost datagram is never answered).
const DNS_TIMEOUT_NS: u64 = 5_000_000_000;

/// A request seen, waiting for its response to end.
struct Request {
    head: Head,
    /// When it began: the read that completed its head returned (server), or its first write
    /// began (client), kernel ns.
    start_ns: u64,
    tid: u32,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    flags: u32,
    trace_state: Option<Arc<str>>,
    /// The response's head, once it began (boxed: most requests wait without one, and a
    /// connection's queue holds a few).
    response: Option<Box<Head>>,
    /// The last byte of the response so far.
    response_end_ns: u64,
    /// CPU of the last event of the pair.
    cpu: u32,
    /// Not traced (beyond MAX_PENDING): holds its place for its response only.
    skipped: bool,
}

/// What a span takes from its connection: addresses and role, pid, comm.
type Meta = (L7Conn, u32, [u8; 16]);

struct Conn {
    info: L7Conn,
    pid: u32,
    comm: [u8; 16],
    requests: Stream,
    responses: Stream,
    pending: VecDeque<Request>,
}

impl Conn {
    /// Bytes its streams hold.
    fn held(&self) -> usize {
        self.requests.held() + self.responses.held()
    }
}

/// What the tracker counted (totals since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerCounts {
    /// Spans made.
    pub spans: u64,
    /// Responses with no request to answer (the connection predates oxeye, or its request
    /// was lost).
    pub unmatched_responses: u64,
    /// Requests not traced: more were waiting on their connection than MAX_PENDING.
    pub pipeline_overflow: u64,
    /// Requests whose connection closed before their response ended (sent as spans with
    /// status ERROR).
    pub closed_mid_response: u64,
    /// Heads longer than what was captured (the spans carry what fit).
    pub truncated_heads: u64,
    /// Connections dropped from user space because more than `max_connections` were open.
    pub connections_evicted: u64,
    /// Unfinished heads given up to stay within the buffer budget (their spans truncated).
    pub heads_shed: u64,
}

/// Every tracked connection's state.
pub struct Tracker {
    /// By connection id, least recently used first out when `max_connections` are held.
    conns: lru::LruCache<u64, Conn>,
    /// (pid, tid) → the server span the thread is serving.
    serving: HashMap<(u32, u32), (TraceId, SpanId)>,
    routes: Routes,
    /// Kernel monotonic ns → Unix ns.
    offset: u64,
    counts: TrackerCounts,
    /// Bytes the connections' streams hold (see [`HEAD_BUDGET`]).
    held: usize,
}

impl Tracker {
    /// A tracker keeping at most `max_connections` connections' state.
    pub fn new(routes: Routes, offset: u64, max_connections: usize) -> Tracker {
        Tracker {
            conns: lru::LruCache::new(NonZeroUsize::new(max_connections.max(1)).expect("not 0")),
            serving: HashMap::new(),
            routes,
            offset,
            counts: TrackerCounts::default(),
            held: 0,
        }
    }

    /// Totals so far.
    pub fn counts(&self) -> TrackerCounts {
        self.counts
    }

    /// Connections with state.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Forgets the connections of processes that exited (the kernel never saw them closed).
    pub fn retain_pids(&mut self, alive: impl Fn(u32) -> bool) {
        let gone: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| !alive(c.pid))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(c) = self.conns.pop(&id) {
                self.held = self.held.saturating_sub(c.held());
            }
        }
        self.serving.retain(|(pid, _), _| alive(*pid));
    }

    /// Takes one event (its header and captured bytes); finished spans go to `out`.
    pub fn event(&mut self, ev: &L7Event, data: &[u8], out: &mut Vec<Span>) {
        let id = ev.conn.id;
        if ev.kind == L7_CLOSE {
            if let Some(conn) = self.conns.pop(&id) {
                self.held = self.held.saturating_sub(conn.held());
                self.close(conn, ev.end_ns, out);
            }
            return;
        }
        if !matches!(ev.conn.proto, PROTO_HTTP | PROTO_DNS | PROTO_REDIS) {
            return;
        }
        if !self.conns.contains(&id) {
            let fresh = Conn {
                info: ev.conn,
                pid: ev.pid,
                comm: ev.comm,
                requests: Stream::new(&ev.conn, false),
                responses: Stream::new(&ev.conn, true),
                pending: VecDeque::new(),
            };
            // Bounded: the connection least recently heard from makes room.
            if let Some((_, old)) = self.conns.push(id, fresh) {
                self.counts.connections_evicted += 1;
                self.held = self.held.saturating_sub(old.held());
                for r in &old.pending {
                    self.unserve(old.pid, r);
                }
            }
        }
        let conn = self.conns.get_mut(&id).expect("just inserted");
        let meta = (conn.info, conn.pid, conn.comm);
        let server = conn.info.role == ROLE_SERVER;
        let gap = ev.bytes.saturating_sub(data.len() as u64);
        let mut pieces = Vec::new();
        let mut done = Vec::new();
        let mut timed_out = Vec::new();
        if server == (ev.kind == L7_READ) {
            // Request bytes: a response whose end only the other side's turn shows has ended,
            // and with it any responses pipelined behind it (not seen: the framing was lost).
            if conn.responses.end_open() {
                let end = conn.pending.front().map_or(0, |r| r.response_end_ns);
                for (i, mut r) in conn.pending.drain(..).enumerate() {
                    if i > 0 {
                        r.head.truncated = true;
                        r.response_end_ns = end.max(r.start_ns);
                    }
                    done.push(r);
                }
            }
            let before = conn.requests.held();
            conn.requests.feed(data, gap, false, &mut pieces);
            self.held = (self.held + conn.requests.held()).saturating_sub(before);
            if self.held > HEAD_BUDGET {
                let h = conn.requests.held();
                if conn.requests.shed(&mut pieces) {
                    self.held = self.held.saturating_sub(h);
                    self.counts.heads_shed += 1;
                }
            }
            let start = if server { ev.end_ns } else { ev.start_ns };
            for p in pieces {
                let Piece::Began(head) = p else { continue };
                self.counts.truncated_heads += head.truncated as u64;
                // A DNS query unanswered for long was lost on the way: it ends in error.
                if conn.info.proto == PROTO_DNS {
                    while conn
                        .pending
                        .front()
                        .is_some_and(|r| r.start_ns.saturating_add(DNS_TIMEOUT_NS) < ev.end_ns)
                    {
                        let mut r = conn.pending.pop_front().expect("checked");
                        r.response_end_ns = r.start_ns.saturating_add(DNS_TIMEOUT_NS);
                        timed_out.push(r);
                    }
                }
                let mut req = new_request(head, start, ev, server, &self.serving);
                if conn.pending.len() >= MAX_PENDING {
                    self.counts.pipeline_overflow += 1;
                    if conn.pending.len() >= 4 * MAX_PENDING {
                        continue;
                    }
                    req.skipped = true;
                } else if server {
                    self.serving
                        .insert((ev.pid, ev.tid), (req.trace_id, req.span_id));
                }
                if conn.pending.capacity() == 0 {
                    // One at a time is the usual case: not the four `push_back` would make room for.
                    conn.pending.reserve_exact(1);
                }
                conn.pending.push_back(req);
            }
        } else {
            conn.requests.end_open();
            // HEAD responses have no body: ask the request being answered.
            let head_req = conn
                .pending
                .iter()
                .find(|r| r.response.is_none() || conn.responses.in_message())
                .is_some_and(|r| r.head.method.as_deref() == Some("HEAD"));
            let before = conn.responses.held();
            conn.responses.feed(data, gap, head_req, &mut pieces);
            self.held = (self.held + conn.responses.held()).saturating_sub(before);
            if self.held > HEAD_BUDGET {
                let h = conn.responses.held();
                if conn.responses.shed(&mut pieces) {
                    self.held = self.held.saturating_sub(h);
                    self.counts.heads_shed += 1;
                }
            }
            for p in pieces {
                match p {
                    Piece::Began(head) => {
                        self.counts.truncated_heads += head.truncated as u64;
                        // In order; a DNS response answers the query with its id.
                        let answers = |r: &Request| {
                            r.response.is_none() && (head.id.is_none() || r.head.id == head.id)
                        };
                        match conn.pending.iter_mut().find(|r| answers(r)) {
                            Some(r) => r.response = Some(Box::new(head)),
                            None => self.counts.unmatched_responses += 1,
                        }
                    }
                    Piece::Ended => {
                        let answered = conn.pending.iter().position(|r| r.response.is_some());
                        if let Some(mut r) = answered.and_then(|i| conn.pending.remove(i)) {
                            r.response_end_ns = ev.end_ns;
                            r.cpu = ev.cpu;
                            done.push(r);
                        }
                    }
                }
            }
            if let Some(r) = conn.pending.front_mut().filter(|r| r.response.is_some()) {
                r.response_end_ns = ev.end_ns;
                r.cpu = ev.cpu;
            }
        }
        for r in done.into_iter().filter(|r| !r.skipped) {
            let end = r.response_end_ns;
            out.push(self.finish(meta, r, end, None));
        }
        for r in timed_out.into_iter().filter(|r| !r.skipped) {
            let end = r.response_end_ns;
            out.push(self.finish(meta, r, end, Some("no response within 5 s")));
        }
    }

    /// A connection closed: a response that ran until the close ends; requests still waiting
    /// become spans with status ERROR.
    fn close(&mut self, mut conn: Conn, at_ns: u64, out: &mut Vec<Span>) {
        let meta = (conn.info, conn.pid, conn.comm);
        if conn.responses.end_open() {
            if let Some(done) = conn.pending.pop_front().filter(|r| !r.skipped) {
                let end = done.response_end_ns;
                out.push(self.finish(meta, done, end, None));
            }
        }
        while let Some(r) = conn.pending.pop_front() {
            if r.skipped {
                continue;
            }
            self.counts.closed_mid_response += 1;
            let end = r.response_end_ns.max(at_ns);
            let why = if r.response.is_some() {
                "connection closed before the response ended"
            } else {
                "connection closed before a response"
            };
            out.push(self.finish(meta, r, end, Some(why)));
        }
    }

    /// The span of a request and its response; the thread no longer serves it.
    fn finish(&mut self, meta: Meta, r: Request, end_ns: u64, error: Option<&str>) -> Span {
        self.counts.spans += 1;
        self.unserve(meta.1, &r);
        self.span(meta, r, end_ns, error)
    }

    /// The thread that read request `r` no longer serves it.
    fn unserve(&mut self, pid: u32, r: &Request) {
        let key = (pid, r.tid);
        if self.serving.get(&key) == Some(&(r.trace_id, r.span_id)) {
            self.serving.remove(&key);
        }
    }

    fn span(&self, meta: Meta, r: Request, end_ns: u64, error: Option<&str>) -> Span {
        let (info, pid, comm) = meta;
        let server = info.role == ROLE_SERVER;
        let (name, mut a, failed) = match info.proto {
            PROTO_REDIS => redis_span(&r, &info),
            PROTO_DNS => dns_span(&r, &info),
            _ => self.http_span(&r, &info),
        };
        let peer = addr(&info.remote, info.family);
        a.set(k!("network.peer.address"), peer.to_string());
        a.set(k!("network.peer.port"), info.remote_port as i64);
        a.set(
            k!("network.transport"),
            oxeye_api::Value::Str(if info.sock_type == 2 {
                k!("udp")
            } else {
                k!("tcp")
            }),
        );
        if info.tls != 0 {
            // The conventions' flag for a connection that completed its TLS handshake.
            a.set(k!("tls.established"), true);
        }
        if r.head.truncated || r.response.as_ref().is_some_and(|h| h.truncated) {
            a.set(k!("oxeye.l7.truncated"), true);
        }
        let (status, message) = match (error, failed) {
            (Some(why), _) => {
                a.set(k!("error.type"), "connection_closed");
                (StatusCode::Error, Some(Arc::from(why)))
            }
            (None, Some(kind)) => {
                a.set(k!("error.type"), kind);
                (StatusCode::Error, None)
            }
            _ => (StatusCode::Unset, None),
        };
        Span {
            trace_id: r.trace_id,
            span_id: r.span_id,
            parent_span_id: r.parent,
            name: name.into(),
            kind: if server {
                SpanKind::Server
            } else {
                SpanKind::Client
            },
            start_unix_ns: r.start_ns.wrapping_add(self.offset),
            end_unix_ns: end_ns.max(r.start_ns).wrapping_add(self.offset),
            status,
            status_message: message,
            attributes: a,
            task: Some(TaskContext {
                pid,
                tid: r.tid,
                comm: Comm(comm),
                cpu: r.cpu,
            }),
            trace_state: r.trace_state,
            flags: r.flags,
            ..Span::default()
        }
    }

    /// An HTTP span's name, attributes and error type (when it failed).
    fn http_span(&self, r: &Request, info: &L7Conn) -> (String, Attributes, Option<String>) {
        let server = info.role == ROLE_SERVER;
        let method = normal_method(r.head.method.as_deref().unwrap_or("_OTHER"));
        let (path, query) = match r.head.target.as_deref() {
            Some(t) => match t.split_once('?') {
                Some((p, q)) => (Some(p), Some(q)),
                None => (Some(t), None),
            },
            None => (None, None),
        };
        let route = if server {
            path.and_then(|p| self.routes.matching(p))
        } else {
            None
        };
        let mut a = Attributes::new();
        a.set(k!("http.request.method"), word(method));
        if method == "_OTHER" {
            if let Some(m) = &r.head.method {
                a.set(k!("http.request.method_original"), m.as_str());
            }
        }
        if let Some(p) = path {
            a.set(k!("url.path"), p);
        }
        if let Some(q) = query {
            a.set(k!("url.query"), q);
        }
        if let Some(route) = &route {
            a.set(k!("http.route"), route.clone());
        }
        let status = r.response.as_ref().and_then(|h| h.status);
        if let Some(s) = status {
            a.set(k!("http.response.status_code"), s as i64);
        }
        if let Some(v) = r.head.version {
            a.set(k!("network.protocol.version"), word(v));
        }
        let (host, port) = split_host(r.head.host.as_deref());
        if server {
            a.set(
                k!("url.scheme"),
                oxeye_api::Value::Str(if info.tls != 0 {
                    k!("https")
                } else {
                    k!("http")
                }),
            );
            let local = addr(&info.local, info.family);
            a.set(
                k!("server.address"),
                host.unwrap_or_else(|| local.to_string()),
            );
            a.set(k!("server.port"), port.unwrap_or(info.local_port) as i64);
            a.set(
                k!("client.address"),
                addr(&info.remote, info.family).to_string(),
            );
            a.set(k!("client.port"), info.remote_port as i64);
        } else {
            let host = host.unwrap_or_else(|| addr(&info.remote, info.family).to_string());
            let port = port.unwrap_or(info.remote_port);
            if let Some(t) = r.head.target.as_deref().filter(|t| t.starts_with('/')) {
                let scheme = if info.tls != 0 { "https" } else { "http" };
                a.set(k!("url.full"), format!("{scheme}://{host}:{port}{t}"));
            }
            a.set(k!("server.address"), host);
            a.set(k!("server.port"), port as i64);
        }
        if let Some(ua) = &r.head.user_agent {
            a.set(k!("user_agent.original"), ua.as_str());
        }
        // Per the HTTP span conventions: 5xx is an error on both sides, 4xx only on the
        // client's.
        let failed = match status {
            Some(s) if s >= 500 || (s >= 400 && !server) => Some(s.to_string()),
            _ => None,
        };
        let name = match &route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        };
        (name, a, failed)
    }
}

/// A DNS query's span name (`DNS A`), attributes and error type (the response code's name
/// when it is not NOERROR).
fn dns_span(r: &Request, info: &L7Conn) -> (String, Attributes, Option<String>) {
    let mut a = Attributes::new();
    if let Some(name) = &r.head.target {
        a.set(k!("dns.question.name"), name.as_str());
    }
    if let Some(t) = &r.head.method {
        a.set(k!("oxeye.dns.question.type"), t.as_str());
    }
    set_server(&mut a, info);
    let rcode = r.response.as_ref().and_then(|h| h.status);
    let failed = rcode.map(dns::rcode_name).inspect(|name| {
        a.set(k!("oxeye.dns.response_code"), name.clone());
    });
    let name = format!("DNS {}", r.head.method.as_deref().unwrap_or("query"));
    (name, a, failed.filter(|n| n != "NOERROR"))
}

/// A Redis command's span name, attributes (database conventions) and error type.
fn redis_span(r: &Request, info: &L7Conn) -> (String, Attributes, Option<String>) {
    let mut a = Attributes::new();
    a.set(k!("db.system.name"), oxeye_api::Value::Str(k!("redis")));
    let op = r.head.method.clone();
    if let Some(op) = &op {
        a.set(k!("db.operation.name"), op.as_str());
    }
    set_server(&mut a, info);
    // An error reply's first word is its kind: `ERR`, `WRONGTYPE`, `NOAUTH`...
    let failed = r
        .response
        .as_ref()
        .and_then(|h| h.error.as_deref())
        .map(|e| {
            let kind = e.split_whitespace().next().unwrap_or("ERR").to_string();
            a.set(k!("db.response.status_code"), kind.clone());
            kind
        });
    (op.unwrap_or_else(|| "redis".to_string()), a, failed)
}

fn new_request(
    head: Head,
    start_ns: u64,
    ev: &L7Event,
    server: bool,
    serving: &HashMap<(u32, u32), (TraceId, SpanId)>,
) -> Request {
    let span_id = SpanId(nonzero_id().to_be_bytes());
    let mut trace_state = None;
    let (trace_id, parent, flags) = match (
        server,
        head.traceparent.as_deref().and_then(parse_traceparent),
    ) {
        (true, Some((t, p, f))) => {
            trace_state = head.tracestate.as_deref().map(Arc::from);
            // Bits 8 and 9: the parent is known and remote (OTLP span flags).
            (t, Some(p), f as u32 | 0x300)
        }
        (false, _) => match serving.get(&(ev.pid, ev.tid)) {
            Some(&(t, p)) => (t, Some(p), 0x100 | 1),
            None => (new_trace_id(), None, 1),
        },
        _ => (new_trace_id(), None, 1),
    };
    Request {
        head,
        start_ns,
        tid: ev.tid,
        trace_id,
        span_id,
        parent,
        flags,
        trace_state,
        response: None,
        response_end_ns: start_ns,
        cpu: ev.cpu,
        skipped: false,
    }
}

/// `server.address`/`.port`: the local end where the process serves, the peer where it calls.
fn set_server(a: &mut Attributes, info: &L7Conn) {
    let (address, port) = if info.role == ROLE_SERVER {
        (addr(&info.local, info.family), info.local_port)
    } else {
        (addr(&info.remote, info.family), info.remote_port)
    };
    a.set(k!("server.address"), address.to_string());
    a.set(k!("server.port"), port as i64);
}

fn nonzero_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

fn new_trace_id() -> TraceId {
    let hi = nonzero_id().to_be_bytes();
    let lo: [u8; 8] = rand::random::<u64>().to_be_bytes();
    let mut id = [0; 16];
    id[..8].copy_from_slice(&hi);
    id[8..].copy_from_slice(&lo);
    TraceId(id)
}

/// A W3C `traceparent` (version 00 layout): trace id, parent span id, flags. Invalid ids (all
/// zero) and malformed values are refused, as the spec requires.
pub fn parse_traceparent(v: &str) -> Option<(TraceId, SpanId, u8)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str, out: &mut [u8]| -> Option<()> {
        for (i, b) in out.iter_mut().enumerate() {
            let pair = s.get(2 * i..2 * i + 2)?;
            if pair.bytes().any(|c| c.is_ascii_uppercase()) {
                return None;
            }
            *b = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(())
    };
    let (mut t, mut p, mut f) = ([0u8; 16], [0u8; 8], [0u8; 1]);
    hex(trace, &mut t)?;
    hex(span, &mut p)?;
    hex(flags, &mut f)?;
    if t == [0; 16] || p == [0; 8] {
        return None;
    }
    Some((TraceId(t), SpanId(p), f[0]))
}

/// The methods the HTTP conventions name; any other is `_OTHER`.
fn normal_method(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "_OTHER",
    }
}

fn addr(bytes: &[u8; 16], family: u16) -> IpAddr {
    if family == 10 {
        let v6 = std::net::Ipv6Addr::from(*bytes);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))
    }
}

/// `Host` split into name and port (`[v6]:port` too).
fn split_host(host: Option<&str>) -> (Option<String>, Option<u16>) {
    let Some(h) = host.filter(|h| !h.is_empty()) else {
        return (None, None);
    };
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((name, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (Some(name.to_string()), port);
        }
    }
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(p) => (Some(name.to_string()), Some(p)),
            Err(_) => (Some(h.to_string()), None),
        },
        _ => (Some(h.to_string()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_ebpf_common::{L7_WRITE, ROLE_CLIENT};

    #[test]
    fn unfinished_heads_are_given_up_past_the_budget_and_their_bytes_freed() {
        // Half a head (no blank line) on each of many connections.
        let half = format!(
            "GET /x HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n",
            "a".repeat(900)
        );
        let n = HEAD_BUDGET / half.len() + 1000;
        let mut t = Tracker::new(Routes::default(), 0, n + 1);
        let mut spans = Vec::new();
        for id in 1..=n as u64 {
            let e = ev(id, ROLE_SERVER, L7_READ, 7, id, half.len() as u64);
            t.event(&e, half.as_bytes(), &mut spans);
            assert!(t.held <= HEAD_BUDGET, "{} after {id}", t.held);
        }
        let c = t.counts();
        assert!(c.heads_shed >= 900, "{c:?}");
        assert_eq!(c.truncated_heads, c.heads_shed);
        assert!(spans.is_empty());
        // Closing every connection frees every byte, and each shed head still gives its span.
        for id in 1..=n as u64 {
            t.event(
                &ev(id, ROLE_SERVER, L7_CLOSE, 7, n as u64 + id, 0),
                &[],
                &mut spans,
            );
        }
        assert_eq!(t.held, 0);
        assert_eq!(t.connections(), 0);
        let truncated = spans
            .iter()
            .filter(|s| s.attributes.get("oxeye.l7.truncated").is_some())
            .count() as u64;
        assert_eq!(truncated, c.heads_shed);
    }

    fn ev(id: u64, role: u8, kind: u8, tid: u32, at: u64, bytes: u64) -> L7Event {
        L7Event {
            conn: L7Conn {
                id,
                local: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                remote: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                local_port: if role == ROLE_SERVER { 8080 } else { 40000 },
                remote_port: if role == ROLE_SERVER { 40000 } else { 8080 },
                family: 2,
                role,
                proto: PROTO_HTTP,
                ..L7Conn::default()
            },
            start_ns: at,
            end_ns: at + 10,
            bytes,
            pid: 1,
            tid,
            fd: 3,
            cpu: 0,
            captured: 0,
            kind,
            _pad: 0,
            _pad32: 0,
            comm: *b"test\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    fn feed(t: &mut Tracker, e: L7Event, data: &[u8]) -> Vec<Span> {
        let mut out = Vec::new();
        t.event(&e, data, &mut out);
        out
    }

    fn get<'a>(s: &'a Span, key: &str) -> Option<&'a oxeye_api::Value> {
        s.attributes
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn server_span_joins_the_callers_trace_and_its_client_call_is_a_child() {
        let mut t = Tracker::new(Routes::new(&["/users/{id}".to_string()]).unwrap(), 0, 100);
        let req = b"GET /users/42?x=1 HTTP/1.1\r\nHost: svc:8080\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
        assert!(feed(
            &mut t,
            ev(1, ROLE_SERVER, L7_READ, 7, 100, req.len() as u64),
            req
        )
        .is_empty());
        // The same thread calls out while serving.
        let out_req = b"GET /db HTTP/1.1\r\nHost: db\r\n\r\n";
        feed(
            &mut t,
            ev(2, ROLE_CLIENT, L7_WRITE, 7, 200, out_req.len() as u64),
            out_req,
        );
        let out_resp = b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n";
        let client = feed(
            &mut t,
            ev(2, ROLE_CLIENT, L7_READ, 7, 300, out_resp.len() as u64),
            out_resp,
        );
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let server = feed(
            &mut t,
            ev(1, ROLE_SERVER, L7_WRITE, 7, 400, resp.len() as u64),
            resp,
        );
        let (client, server) = (&client[0], &server[0]);
        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!(&*server.name, "GET /users/{id}");
        assert_eq!(hex(&server.trace_id.0), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            server.parent_span_id,
            Some(SpanId([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]))
        );
        assert_eq!(get(server, "url.path"), Some(&"/users/42".into()));
        assert_eq!(get(server, "url.query"), Some(&"x=1".into()));
        assert_eq!(get(server, "server.address"), Some(&"svc".into()));
        assert_eq!(
            get(server, "http.response.status_code"),
            Some(&200i64.into())
        );
        assert_eq!(server.status, StatusCode::Unset);
        assert_eq!((server.start_unix_ns, server.end_unix_ns), (110, 410));
        assert_eq!(client.kind, SpanKind::Client);
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, Some(server.span_id));
        assert_eq!(client.status, StatusCode::Error);
        assert_eq!((client.start_unix_ns, client.end_unix_ns), (200, 310));
    }

    #[test]
    fn close_ends_a_response_without_length_and_fails_an_unanswered_request() {
        let mut t = Tracker::new(Routes::default(), 0, 100);
        let req = b"GET / HTTP/1.0\r\n\r\n";
        feed(
            &mut t,
            ev(1, ROLE_SERVER, L7_READ, 7, 100, req.len() as u64),
            req,
        );
        let resp = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        feed(
            &mut t,
            ev(1, ROLE_SERVER, L7_WRITE, 7, 200, resp.len() as u64),
            resp,
        );
        let mut close = ev(1, ROLE_SERVER, L7_CLOSE, 7, 300, 0);
        close.bytes = 0;
        let spans = feed(&mut t, close, b"");
        assert_eq!(spans.len(), 1);
        assert_eq!(
            spans[0].status,
            StatusCode::Unset,
            "404 is not a server error"
        );
        assert_eq!(spans[0].end_unix_ns, 210);
        // A request whose connection closes before any response.
        feed(
            &mut t,
            ev(2, ROLE_SERVER, L7_READ, 7, 400, req.len() as u64),
            req,
        );
        let spans = feed(&mut t, ev(2, ROLE_SERVER, L7_CLOSE, 7, 500, 0), b"");
        assert_eq!(spans[0].status, StatusCode::Error);
        assert_eq!(t.counts().closed_mid_response, 1);
    }

    #[test]
    fn a_reply_whose_framing_was_lost_takes_the_pipelined_ones_with_it() {
        let mut t = Tracker::new(Routes::default(), 0, 100);
        let redis = |kind, tid, at, data: &[u8], total: u64| {
            let mut e = ev(5, ROLE_CLIENT, kind, tid, at, total);
            e.conn.proto = PROTO_REDIS;
            (e, data.to_vec())
        };
        let mut spans = Vec::new();
        for (e, d) in [
            redis(L7_WRITE, 1, 100, b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*4\r\n$6\r\nLRANGE\r\n$3\r\nbig\r\n$1\r\n0\r\n$2\r\n-1\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n", 0),
            // GET a's reply, then LRANGE's: its elements run past the capture (framing lost,
            // GET b's reply swallowed).
            redis(L7_READ, 1, 200, b"$1\r\na\r\n*1000\r\n$5\r\nxx", 9000),
            redis(L7_WRITE, 1, 300, b"*2\r\n$3\r\nGET\r\n$1\r\nc\r\n", 0),
            redis(L7_READ, 1, 400, b"$1\r\nc\r\n", 0),
        ] {
            let total = if e.bytes == 0 { d.len() as u64 } else { e.bytes };
            let mut e = e;
            e.bytes = total;
            t.event(&e, &d, &mut spans);
        }
        let names: Vec<&str> = spans.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["GET", "LRANGE", "GET", "GET"]);
        // GET c pairs with its own reply, at its own time.
        assert_eq!((spans[3].start_unix_ns, spans[3].end_unix_ns), (300, 410));
    }

    #[test]
    fn traceparent_parsing_follows_the_spec() {
        assert!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some()
        );
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-xyz",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
