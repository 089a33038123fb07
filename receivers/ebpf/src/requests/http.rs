//! HTTP/1.x framing of one direction of a connection, from what the kernel captured: each read
//! or write arrives as the first bytes it moved plus the count of the rest (a gap). Heads are
//! parsed with `httparse`; bodies are skipped by `Content-Length` or chunk sizes, across gaps
//! where the framing allows, so keep-alive and pipelined messages are told apart. Where a gap
//! hides the framing (a head longer than the capture, a chunk-size line not captured), the
//! message is `Lost`: it ends where the other direction speaks next.

/// What a message's head says (the fields spans use). Redis and DNS use it too: a Redis
/// command's name in `method`, an error reply in `error`; a DNS question's type in `method`, its
/// name in `target`, the response code in `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Request: the method.
    pub method: Option<String>,
    /// Request: the target (path and query).
    pub target: Option<String>,
    /// Response: the status code.
    pub status: Option<u16>,
    /// `1.0` or `1.1`.
    pub version: Option<&'static str>,
    /// `Host` header.
    pub host: Option<String>,
    /// `traceparent` header.
    pub traceparent: Option<String>,
    /// `tracestate` header.
    pub tracestate: Option<String>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// Redis: an error reply's message (`ERR unknown command`, `WRONGTYPE …`).
    pub error: Option<String>,
    /// DNS: the message id (a response answers the query with the same id).
    pub id: Option<u16>,
    /// The head did not fit in what was captured: the fields above are those that did.
    pub truncated: bool,
}

/// How the body after a head is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
    /// A response without length: it ends with the connection.
    UntilClose,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    /// Collecting a head (its bytes so far).
    Head(Vec<u8>),
    /// Skipping a body of known length.
    Length(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// The body runs until the connection closes.
    UntilClose,
    /// Framing unknown: the message ends when the other direction speaks.
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line (its bytes so far).
    Size(Vec<u8>),
    /// Skipping chunk data, then its CRLF (the count includes the 2).
    Data(u64),
    /// After the last chunk: trailer lines until an empty one (bytes of the current line).
    Trailer(Vec<u8>),
}

/// What feeding a segment produced, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A message began with this head.
    Began(Head),
    /// The message begun last is complete.
    Ended,
}

/// Longest head collected across segments (larger heads are parsed as far as they go): with
/// `max_connections` connections each holding a head under way (a slow client sends a byte at
/// a time), this bounds what they hold.
const MAX_HEAD: usize = 4 * 1024;
/// Longest chunk-size or trailer line kept (a longer one loses the framing).
const MAX_LINE: usize = 1024;
/// Headers parsed per head at most.
const MAX_HEADERS: usize = 64;

/// One direction of an HTTP/1 connection.
#[derive(Debug)]
pub struct Stream {
    state: State,
    /// Requests: false; responses: true.
    responses: bool,
}

impl Stream {
    /// The stream of requests (`responses` false) or of responses.
    pub fn new(responses: bool) -> Stream {
        Stream {
            state: State::Idle,
            responses,
        }
    }

    /// Bytes this stream holds while it waits for the rest of a head or line.
    pub fn held(&self) -> usize {
        match &self.state {
            State::Head(buf) => buf.capacity(),
            State::Chunked(Chunk::Size(line) | Chunk::Trailer(line)) => line.capacity(),
            _ => 0,
        }
    }

    /// Gives up the head being collected, to free its bytes: what parsed so far begins a
    /// message marked truncated, whose end the other side's turn shows. False when no head
    /// was being collected.
    pub fn shed(&mut self, out: &mut Vec<Piece>) -> bool {
        let collecting = matches!(self.state, State::Head(_));
        self.lose_in_head(out);
        collecting
    }

    /// Whether a message is under way (begun, not ended).
    pub fn in_message(&self) -> bool {
        self.state != State::Idle
    }

    /// Whether the message under way ends only when the other side speaks or closes.
    pub fn open_ended(&self) -> bool {
        matches!(self.state, State::Lost | State::UntilClose)
    }

    /// Ends a message whose end cannot be seen in this direction (`Lost`, `UntilClose`): the
    /// other direction spoke, or the connection closed. True when one ended.
    pub fn end_open(&mut self) -> bool {
        if self.open_ended() {
            self.state = State::Idle;
            return true;
        }
        false
    }

    /// Feeds one syscall's bytes: `data` captured, then `gap` more not captured. `head_req`
    /// tells a response which request it answers (HEAD responses have no body). Appends what
    /// happened to `out`.
    pub fn feed(&mut self, data: &[u8], gap: u64, head_req: bool, out: &mut Vec<Piece>) {
        let mut data = data;
        while !data.is_empty() {
            let used = self.step(data, head_req, out);
            data = &data[used..];
        }
        if gap > 0 {
            self.skip(gap, out);
        }
    }

    /// Consumes bytes of `data` in the current state; returns how many (at least 1).
    fn step(&mut self, data: &[u8], head_req: bool, out: &mut Vec<Piece>) -> usize {
        match &mut self.state {
            State::Idle => {
                // Stray line ends between messages are allowed (RFC 9112 §2.2).
                if data[0] == b'\r' || data[0] == b'\n' {
                    return 1;
                }
                self.state = State::Head(Vec::new());
                self.step(data, head_req, out)
            }
            State::Head(buf) => {
                let before = buf.len();
                let take = data.len().min(MAX_HEAD - before);
                buf.extend_from_slice(&data[..take]);
                match self.parse_head(head_req) {
                    Some((head, body, head_len)) => {
                        out.push(Piece::Began(head));
                        self.start_body(body, out);
                        // What of this segment the head used; the rest is the body's.
                        (head_len - before).max(1)
                    }
                    None if take < data.len() || before + take >= MAX_HEAD => {
                        // A head longer than we keep: what parsed so far, framing unknown.
                        self.lose_in_head(out);
                        data.len()
                    }
                    None => take.max(1),
                }
            }
            State::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    self.state = State::Idle;
                    out.push(Piece::Ended);
                }
                n as usize
            }
            State::Chunked(chunk) => match chunk {
                Chunk::Size(line) => {
                    let (used, whole) = collect_line(line, data);
                    if whole {
                        match httparse::parse_chunk_size(line) {
                            Ok(httparse::Status::Complete((_, 0))) => {
                                *chunk = Chunk::Trailer(Vec::new());
                            }
                            Ok(httparse::Status::Complete((_, size))) => {
                                *chunk = Chunk::Data(size.saturating_add(2));
                            }
                            _ => self.state = State::Lost,
                        }
                    } else if line.len() > MAX_LINE {
                        self.state = State::Lost;
                    }
                    used
                }
                Chunk::Data(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        *chunk = Chunk::Size(Vec::new());
                    }
                    n as usize
                }
                Chunk::Trailer(line) => {
                    let (used, whole) = collect_line(line, data);
                    if whole {
                        if line.iter().all(|&b| b == b'\r' || b == b'\n') {
                            self.state = State::Idle;
                            out.push(Piece::Ended);
                        } else {
                            line.clear();
                        }
                    } else if line.len() > MAX_LINE {
                        self.state = State::Lost;
                    }
                    used
                }
            },
            State::UntilClose | State::Lost => data.len(),
        }
    }

    /// `n` bytes went by uncaptured.
    fn skip(&mut self, n: u64, out: &mut Vec<Piece>) {
        match &mut self.state {
            State::Length(left) => {
                if n >= *left {
                    // The rest of a gap past the body is the start of a message we cannot see.
                    let over = n - *left;
                    self.state = State::Idle;
                    out.push(Piece::Ended);
                    if over > 0 {
                        self.state = State::Lost;
                        out.push(Piece::Began(Head {
                            truncated: true,
                            ..Head::default()
                        }));
                    }
                } else {
                    *left -= n;
                }
            }
            State::Chunked(Chunk::Data(left)) => {
                if n < *left {
                    *left -= n;
                } else if n == *left {
                    // The gap ended with the chunk (and its CRLF): a size line comes next.
                    self.state = State::Chunked(Chunk::Size(Vec::new()));
                } else {
                    self.state = State::Lost;
                }
            }
            State::Head(_) => self.lose_in_head(out),
            State::UntilClose | State::Lost => {}
            State::Idle => {
                self.state = State::Lost;
                out.push(Piece::Began(Head {
                    truncated: true,
                    ..Head::default()
                }));
            }
            State::Chunked(_) => self.state = State::Lost,
        }
    }

    /// The head being collected cannot complete: report what of it parses, framing lost.
    fn lose_in_head(&mut self, out: &mut Vec<Piece>) {
        let State::Head(buf) = &self.state else {
            return;
        };
        let mut head = partial_head(buf, self.responses);
        head.truncated = true;
        out.push(Piece::Began(head));
        self.state = State::Lost;
    }

    fn start_body(&mut self, body: Body, out: &mut Vec<Piece>) {
        self.state = match body {
            Body::None | Body::Length(0) => {
                out.push(Piece::Ended);
                State::Idle
            }
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::Chunked(Chunk::Size(Vec::new())),
            Body::UntilClose => State::UntilClose,
        };
    }

    /// The complete head in the buffer: (head, body framing, head length); `None` while partial.
    /// An interim (1xx) response is skipped: the next head is the final one.
    fn parse_head(&mut self, head_req: bool) -> Option<(Head, Body, usize)> {
        let State::Head(buf) = &mut self.state else {
            return None;
        };
        // Bytes of interim heads dropped from the front of `buf`.
        let mut dropped = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let (head, len, fields) = if self.responses {
                let mut r = httparse::Response::new(&mut headers);
                match r.parse(buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let head = Head {
                            status: r.code,
                            version: version(r.version),
                            ..Head::default()
                        };
                        (head, n, r.headers.to_vec())
                    }
                    Ok(httparse::Status::Partial) => return None,
                    Err(_) => (partial_head(buf, true), buf.len(), Vec::new()),
                }
            } else {
                let mut r = httparse::Request::new(&mut headers);
                match r.parse(buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let head = Head {
                            method: r.method.map(str::to_string),
                            target: r.path.map(str::to_string),
                            version: version(r.version),
                            ..Head::default()
                        };
                        (head, n, r.headers.to_vec())
                    }
                    Ok(httparse::Status::Partial) => return None,
                    Err(_) => (partial_head(buf, false), buf.len(), Vec::new()),
                }
            };
            let mut head = head;
            let mut length = None;
            let mut chunked = false;
            for h in &fields {
                let value = || String::from_utf8_lossy(h.value).trim().to_string();
                match h.name.to_ascii_lowercase().as_str() {
                    "host" => head.host = Some(value()),
                    "traceparent" => head.traceparent = Some(value()),
                    "tracestate" => head.tracestate = Some(value()),
                    "user-agent" => head.user_agent = Some(value()),
                    "content-length" => length = value().parse::<u64>().ok(),
                    "transfer-encoding" => {
                        chunked = value().to_ascii_lowercase().ends_with("chunked")
                    }
                    _ => {}
                }
            }
            if self.responses && matches!(head.status, Some(100..=199)) && head.status != Some(101)
            {
                // Interim response: drop its bytes and parse what follows.
                buf.drain(..len);
                dropped += len;
                if buf.is_empty() {
                    return None;
                }
                continue;
            }
            let body = if fields.is_empty() && head.method.is_none() && head.status.is_none() {
                // Not HTTP after all (httparse refused it): no framing to follow.
                Body::UntilClose
            } else if self.responses {
                match head.status {
                    Some(101) => Body::UntilClose,
                    Some(204 | 304) => Body::None,
                    _ if head_req => Body::None,
                    _ if chunked => Body::Chunked,
                    _ => length.map_or(Body::UntilClose, Body::Length),
                }
            } else if chunked {
                Body::Chunked
            } else {
                Body::Length(length.unwrap_or(0))
            };
            return Some((head, body, dropped + len));
        }
    }
}

/// Appends `data` to `line` up to and with its first newline: (bytes used, whether the line is
/// now whole).
fn collect_line(line: &mut Vec<u8>, data: &[u8]) -> (usize, bool) {
    match data.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            line.extend_from_slice(&data[..=nl]);
            (nl + 1, true)
        }
        None => {
            line.extend_from_slice(data);
            (data.len(), false)
        }
    }
}

fn version(v: Option<u8>) -> Option<&'static str> {
    match v {
        Some(0) => Some("1.0"),
        Some(1) => Some("1.1"),
        _ => None,
    }
}

/// What a head cut short (or malformed) says: its start line, and the headers of whole lines.
fn partial_head(buf: &[u8], response: bool) -> Head {
    let text = String::from_utf8_lossy(buf);
    let mut lines = text.split("\r\n");
    let mut head = Head::default();
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    if response {
        head.version = parts.next().and_then(|v| match v {
            "HTTP/1.0" => Some("1.0"),
            "HTTP/1.1" => Some("1.1"),
            _ => None,
        });
        head.status = parts.next().and_then(|s| s.parse().ok());
    } else {
        head.method = parts.next().filter(|m| !m.is_empty()).map(str::to_string);
        head.target = parts.next().map(str::to_string);
        head.version = match parts.next() {
            Some("HTTP/1.0") => Some("1.0"),
            Some("HTTP/1.1") => Some("1.1"),
            _ => None,
        };
    }
    // Every line but the last is whole (the last may be cut).
    let rest: Vec<&str> = lines.collect();
    for line in rest.iter().take(rest.len().saturating_sub(1)) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = Some(value.trim().to_string());
        match name.to_ascii_lowercase().as_str() {
            "host" => head.host = value,
            "traceparent" => head.traceparent = value,
            "tracestate" => head.tracestate = value,
            "user-agent" => head.user_agent = value,
            _ => {}
        }
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut Stream, data: &[u8], gap: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        s.feed(data, gap, false, &mut out);
        out
    }

    fn began(p: &Piece) -> &Head {
        match p {
            Piece::Began(h) => h,
            other => panic!("expected a head, got {other:?}"),
        }
    }

    #[test]
    fn pipelined_requests_in_one_read() {
        let mut s = Stream::new(false);
        let out = feed(
            &mut s,
            b"GET /a HTTP/1.1\r\nHost: x:8080\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n",
            0,
        );
        assert_eq!(out.len(), 6);
        assert_eq!(began(&out[0]).target.as_deref(), Some("/a"));
        assert_eq!(began(&out[0]).host.as_deref(), Some("x:8080"));
        assert_eq!(out[1], Piece::Ended);
        assert_eq!(began(&out[2]).method.as_deref(), Some("POST"));
        assert_eq!(out[3], Piece::Ended);
        assert_eq!(began(&out[4]).target.as_deref(), Some("/c"));
        assert!(!s.in_message());
    }

    #[test]
    fn request_split_across_reads() {
        let mut s = Stream::new(false);
        assert!(feed(&mut s, b"GET /split HT", 0).is_empty());
        assert!(feed(
            &mut s,
            b"TP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
            0
        )
        .is_empty());
        let out = feed(&mut s, b"\r\n", 0);
        assert_eq!(
            began(&out[0]).traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(out[1], Piece::Ended);
    }

    #[test]
    fn body_beyond_the_capture_is_skipped_by_length() {
        let mut s = Stream::new(true);
        // 40 bytes of head captured, then 1000 bytes of body not captured.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        let out = feed(&mut s, head, 1000);
        assert_eq!(began(&out[0]).status, Some(200));
        assert_eq!(out[1], Piece::Ended);
        // The next response on the keep-alive connection parses.
        let out = feed(
            &mut s,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            0,
        );
        assert_eq!(began(&out[0]).status, Some(404));
    }

    #[test]
    fn chunked_response_across_segments() {
        let mut s = Stream::new(true);
        let mut out = feed(
            &mut s,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            0,
        );
        out.extend(feed(&mut s, b"lo\r\n0\r\n", 0));
        assert_eq!(out.len(), 1, "not ended before the final CRLF");
        out.extend(feed(&mut s, b"\r\n", 0));
        assert_eq!(out[1], Piece::Ended);
    }

    #[test]
    fn a_gap_that_ends_with_a_chunk_leaves_the_next_size_line_readable() {
        let mut s = Stream::new(true);
        // Head and the size line captured; the chunk's 1000 bytes and CRLF are not.
        let mut out = feed(
            &mut s,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n",
            1002,
        );
        out.extend(feed(&mut s, b"0\r\n\r\n", 0));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1], Piece::Ended);
    }

    #[test]
    fn interim_response_and_head_request() {
        let mut s = Stream::new(true);
        let mut out = Vec::new();
        s.feed(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
            0,
            true,
            &mut out,
        );
        assert_eq!(began(&out[0]).status, Some(200));
        assert_eq!(out[1], Piece::Ended, "a response to HEAD has no body");
    }

    #[test]
    fn head_longer_than_the_capture_is_lost_until_the_other_side_speaks() {
        let mut s = Stream::new(false);
        let out = feed(
            &mut s,
            b"GET /big HTTP/1.1\r\nHost: h\r\nCookie: aaaa",
            5000,
        );
        let h = began(&out[0]);
        assert!(h.truncated);
        assert_eq!(h.target.as_deref(), Some("/big"));
        assert_eq!(h.host.as_deref(), Some("h"));
        assert!(s.open_ended());
        assert!(s.end_open());
        assert!(!s.in_message());
    }

    #[test]
    fn response_without_length_runs_until_close() {
        let mut s = Stream::new(true);
        let out = feed(&mut s, b"HTTP/1.0 200 OK\r\n\r\nbody", 0);
        assert_eq!(out.len(), 1);
        assert!(s.open_ended());
    }

    #[test]
    fn garbage_never_panics() {
        let mut s = Stream::new(false);
        for chunk in [
            &b"\x00\xff\r\n\r\n"[..],
            b"GET",
            b" / HTTP/9.9\r\n\r\n",
            b"\n\n\n",
        ] {
            let _ = feed(&mut s, chunk, 3);
        }
    }
}
