//! RESP (Redis) framing of one direction of a connection, from what the kernel captured: the
//! first bytes of each read or write, and the count of the rest. Frames are followed by their
//! type lines and length prefixes — aggregates by element counts, bulk strings by length, so a
//! value larger than the capture is skipped without seeing it — and each top-level frame is one
//! command (requests) or one reply. Pipelined commands are told apart the same way. Where a gap
//! hides a type line the frame is `Lost`: it ends where the other direction speaks next.
//!
//! `redis-protocol` decodes whole frames only; here most of a frame may never be seen.

use super::http::{Head, Piece};

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Reading a type line (its bytes so far).
    Line(Vec<u8>),
    /// In a bulk string: bytes left, with its CRLF.
    Bulk(u64),
    /// Framing unknown until the other side speaks.
    Lost,
}

/// Longest type line kept (a simple string or error longer than this is cut).
const MAX_LINE: usize = 512;
/// Bytes of a command name kept.
const MAX_NAME: usize = 32;
/// Aggregates nested at most (deeper framing is lost rather than held).
const MAX_DEPTH: usize = 32;

/// One direction of a RESP connection.
#[derive(Debug)]
pub struct Stream {
    state: State,
    /// Elements left in each open aggregate, outermost first, and whether it is an attribute
    /// (RESP3 `|`: metadata before a value, not an element of anything).
    open: Vec<(u64, bool)>,
    /// The frame under way is an out-of-band push (RESP3 `>` from the server), not a reply.
    push: bool,
    /// A frame is under way.
    started: bool,
    /// Requests: the head of the command under way, sent once its name is known.
    pending: Option<Head>,
    /// The command's name is being read (the first bulk string of a top-level array).
    naming: bool,
    replies: bool,
}

impl Stream {
    /// The stream of commands (`replies` false) or of replies.
    pub fn new(replies: bool) -> Stream {
        Stream {
            state: State::Line(Vec::new()),
            open: Vec::new(),
            started: false,
            pending: None,
            naming: false,
            push: false,
            replies,
        }
    }

    /// Whether a frame is under way.
    pub fn in_message(&self) -> bool {
        self.started
    }

    /// Ends a frame whose end cannot be seen (`Lost`): the other side spoke or closed.
    pub fn end_open(&mut self) -> bool {
        if self.state == State::Lost {
            self.reset();
            return true;
        }
        false
    }

    fn reset(&mut self) {
        self.state = State::Line(Vec::new());
        self.open.clear();
        self.started = false;
        self.pending = None;
        self.naming = false;
        self.push = false;
    }

    /// Feeds one syscall's bytes: `data` captured, then `gap` more not captured.
    pub fn feed(&mut self, data: &[u8], gap: u64, out: &mut Vec<Piece>) {
        let mut data = data;
        while !data.is_empty() {
            let used = self.step(data, out);
            data = &data[used..];
        }
        if gap == 0 {
            return;
        }
        let over = match &mut self.state {
            State::Lost => return,
            State::Bulk(left) if gap < *left => {
                *left -= gap;
                return;
            }
            State::Bulk(left) => {
                // The value ends inside the gap; what follows it was not seen.
                let over = gap - *left;
                self.bulk_done(out);
                over
            }
            _ => gap,
        };
        if over > 0 {
            // A type line (or more) was not captured.
            self.begin(out);
            self.flush_pending(out);
            self.state = State::Lost;
        }
    }

    /// A bulk string ended: a command's name is complete, and it is one element.
    fn bulk_done(&mut self, out: &mut Vec<Piece>) {
        if self.naming {
            self.naming = false;
            self.flush_pending(out);
        }
        self.element_done(out);
    }

    fn begin(&mut self, out: &mut Vec<Piece>) {
        if self.started {
            return;
        }
        self.started = true;
        if self.replies {
            out.push(Piece::Began(Head::default()));
        } else {
            self.pending = Some(Head::default());
        }
    }

    /// Sends the command's head if it is still held back (its name never came).
    fn flush_pending(&mut self, out: &mut Vec<Piece>) {
        if let Some(mut h) = self.pending.take() {
            h.truncated |= h.method.is_none();
            out.push(Piece::Began(h));
        }
    }

    fn step(&mut self, data: &[u8], out: &mut Vec<Piece>) -> usize {
        match &mut self.state {
            State::Lost => data.len(),
            State::Bulk(left) => {
                let n = (*left).min(data.len() as u64) as usize;
                if self.naming {
                    if let Some(h) = &mut self.pending {
                        let name = h.method.get_or_insert_with(String::new);
                        let room = MAX_NAME.saturating_sub(name.len());
                        let text: String = data[..n]
                            .iter()
                            .take(room)
                            .filter(|b| b.is_ascii_graphic())
                            .map(|&b| (b as char).to_ascii_uppercase())
                            .collect();
                        name.push_str(&text);
                    }
                }
                *left -= n as u64;
                if *left == 0 {
                    self.bulk_done(out);
                }
                n
            }
            State::Line(line) => {
                let (take, done) = match data.iter().position(|&b| b == b'\n') {
                    Some(nl) => (nl + 1, true),
                    None => (data.len(), false),
                };
                if line.len() < MAX_LINE {
                    let room = MAX_LINE - line.len();
                    line.extend_from_slice(&data[..take.min(room)]);
                }
                if done {
                    let line = std::mem::take(line);
                    self.line(&line, out);
                }
                take
            }
        }
    }

    /// A whole type line.
    fn line(&mut self, line: &[u8], out: &mut Vec<Piece>) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let Some(kind) = text.chars().next() else {
            // A bare line end between frames.
            return;
        };
        // Top level: no aggregate open (a frame's first line, or what follows its attribute).
        let top = self.open.is_empty();
        if top && !self.started && self.replies && kind == '>' {
            // A push the server sends on its own (pub/sub, client tracking): no reply.
            self.started = true;
            self.push = true;
        }
        self.begin(out);
        let rest = &text[kind.len_utf8()..];
        let count = || rest.trim().parse::<i64>().ok();
        match kind {
            // Aggregates: array, set, push (n elements), map and attribute (2n).
            '*' | '~' | '>' | '%' | '|' => match count() {
                Some(_) if self.open.len() >= MAX_DEPTH => self.lose(out),
                Some(n) if n > 0 => {
                    let n = if matches!(kind, '%' | '|') {
                        n.saturating_mul(2)
                    } else {
                        n
                    };
                    // A command's name is the first element of its top-level array.
                    self.naming = top && !self.replies && kind == '*';
                    self.open.push((n as u64, kind == '|'));
                }
                Some(_) => self.element_done(out),
                None => self.lose(out),
            },
            // Bulk string, verbatim string, bulk error: a length, then that many bytes.
            '$' | '=' | '!' => match count() {
                Some(n) if n >= 0 => {
                    self.state = State::Bulk(n as u64 + 2);
                    if kind == '!' && top && self.replies {
                        set_error(out, "ERR");
                    }
                }
                Some(_) => self.element_done(out),
                None => self.lose(out),
            },
            '-' => {
                if top && self.replies {
                    set_error(out, rest);
                }
                self.element_done(out);
            }
            '+' | ':' | ',' | '#' | '_' | '(' => self.element_done(out),
            _ => self.lose(out),
        }
    }

    fn lose(&mut self, out: &mut Vec<Piece>) {
        self.flush_pending(out);
        self.state = State::Lost;
    }

    /// One element ended: count it against the aggregates it closes; a frame that closes is
    /// a whole command or reply.
    fn element_done(&mut self, out: &mut Vec<Piece>) {
        self.state = State::Line(Vec::new());
        while let Some((left, attribute)) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            let attribute = *attribute;
            self.open.pop();
            if attribute {
                // Metadata ended; the value it describes comes next.
                return;
            }
        }
        if self.push {
            self.push = false;
        } else {
            self.flush_pending(out);
            out.push(Piece::Ended);
        }
        self.started = false;
        self.naming = false;
    }
}

/// Marks the reply begun last as an error (`-ERR …`, `WRONGTYPE …`).
fn set_error(out: &mut [Piece], message: &str) {
    if let Some(Piece::Began(h)) = out.iter_mut().rev().find(|p| matches!(p, Piece::Began(_))) {
        h.error = Some(message.trim().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut Stream, data: &[u8], gap: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        s.feed(data, gap, &mut out);
        out
    }

    fn name(p: &Piece) -> Option<&str> {
        match p {
            Piece::Began(h) => h.method.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn pipelined_commands_each_with_their_name() {
        let mut s = Stream::new(false);
        let out = feed(
            &mut s,
            b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n",
            0,
        );
        let names: Vec<_> = out.iter().filter_map(name).collect();
        assert_eq!(names, ["SET", "GET", "PING"]);
        assert_eq!(out.iter().filter(|p| **p == Piece::Ended).count(), 3);
        assert!(!s.in_message());
    }

    #[test]
    fn a_value_beyond_the_capture_is_skipped_by_its_length() {
        let mut s = Stream::new(false);
        // SET k <1000 bytes>: the value's head captured, the rest not.
        let out = feed(&mut s, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nxxxx", 998);
        assert_eq!(name(&out[0]), Some("SET"));
        assert_eq!(out[1], Piece::Ended);
        let out = feed(&mut s, b"*1\r\n$4\r\nPING\r\n", 0);
        assert_eq!(name(&out[0]), Some("PING"));
    }

    #[test]
    fn replies_nested_split_and_errors() {
        let mut s = Stream::new(true);
        let mut out = feed(&mut s, b"*2\r\n$1\r\na\r\n*1\r\n:", 0);
        assert_eq!(out.len(), 1, "not ended inside the nested array");
        out.extend(feed(&mut s, b"5\r\n", 0));
        assert_eq!(out[1], Piece::Ended);
        let out = feed(
            &mut s,
            b"-WRONGTYPE Operation against a key\r\n+OK\r\n$-1\r\n",
            0,
        );
        match &out[0] {
            Piece::Began(h) => assert_eq!(
                h.error.as_deref(),
                Some("WRONGTYPE Operation against a key")
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(out.iter().filter(|p| **p == Piece::Ended).count(), 3);
    }

    #[test]
    fn a_type_line_not_captured_is_lost_until_the_other_side_speaks() {
        let mut s = Stream::new(true);
        let out = feed(&mut s, b"*3\r\n$1\r\na\r\n", 500);
        assert_eq!(out.len(), 1);
        assert!(s.end_open());
        assert!(!s.in_message());
    }

    #[test]
    fn pushes_and_attributes_are_not_replies_of_their_own() {
        let mut s = Stream::new(true);
        // A client-tracking invalidation push, then an attribute before a reply's value.
        let out = feed(
            &mut s,
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n|1\r\n+ttl\r\n:3\r\n-ERR x\r\n",
            0,
        );
        assert_eq!(out.len(), 2, "one reply: {out:?}");
        match &out[0] {
            Piece::Began(h) => assert_eq!(h.error.as_deref(), Some("ERR x")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut s = Stream::new(true);
        let deep = b"*1\r\n".repeat(1000);
        let _ = feed(&mut s, &deep, 0);
        assert!(s.open.len() <= MAX_DEPTH);
        assert!(s.end_open());
    }

    #[test]
    fn garbage_never_panics() {
        let mut s = Stream::new(false);
        for chunk in [
            &b"*-5\r\n"[..],
            b"$99999999999999999999\r\n",
            b"*2\r\n%1\r\n",
            b"\n\n",
            b"?",
        ] {
            let _ = feed(&mut s, chunk, 7);
            s.end_open();
        }
    }
}
