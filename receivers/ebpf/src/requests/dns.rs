//! DNS messages (RFC 1035 §4.1): over UDP each read or write is one message; over TCP each
//! message has a two-byte length before it. Only the header and the first question are read —
//! what a span needs, and what is there even when the capture cut the answers off (a full
//! decoder, such as `simple-dns`, refuses a cut message; the tests check the two agree on
//! whole ones).

use super::http::{Head, Piece};

/// One direction of a DNS connection.
#[derive(Debug)]
pub struct Stream {
    /// TCP: the two-byte length prefix frames messages.
    tcp: bool,
    /// TCP: bytes left of the message under way.
    left: u64,
    /// TCP: the message under way was announced by its length only (glibc and Go write or
    /// read the prefix apart from the message): its head is in the next bytes.
    head_due: bool,
    /// TCP: a gap hid a length prefix; framing starts again at the next read or write.
    lost: bool,
}

impl Stream {
    /// A stream of messages over TCP (`tcp`) or UDP.
    pub fn new(tcp: bool) -> Stream {
        Stream {
            tcp,
            left: 0,
            head_due: false,
            lost: false,
        }
    }

    /// Whether a message is under way (TCP only; a datagram is always whole).
    pub fn in_message(&self) -> bool {
        self.left > 0
    }

    /// A message's end is always known: nothing is left open.
    pub fn end_open(&mut self) -> bool {
        false
    }

    /// Feeds one syscall's bytes: `data` captured, then `gap` more not captured.
    pub fn feed(&mut self, data: &[u8], gap: u64, out: &mut Vec<Piece>) {
        if !self.tcp {
            out.push(Piece::Began(parse(data, gap > 0)));
            out.push(Piece::Ended);
            return;
        }
        if self.lost {
            // Request and response alternate: a new read or write starts with a prefix.
            self.lost = false;
            self.left = 0;
            self.head_due = false;
        }
        let mut data = data;
        let mut gap = gap;
        loop {
            if self.left > 0 {
                if self.head_due {
                    let have = data.len().min(self.left as usize);
                    let cut = (have as u64) < self.left;
                    out.push(Piece::Began(parse(&data[..have], cut)));
                    self.head_due = false;
                }
                let n = self.left.min(data.len() as u64);
                self.left -= n;
                data = &data[n as usize..];
                let g = self.left.min(gap);
                self.left -= g;
                gap -= g;
                if self.left > 0 {
                    return;
                }
                out.push(Piece::Ended);
            }
            if data.len() < 2 {
                // A prefix cut in two, or not captured: framing is lost until the next call.
                self.lost = !data.is_empty() || gap > 0;
                return;
            }
            let len = u16::from_be_bytes([data[0], data[1]]) as u64;
            data = &data[2..];
            if len == 0 {
                out.push(Piece::Began(parse(&[], true)));
                out.push(Piece::Ended);
                continue;
            }
            self.left = len;
            self.head_due = true;
            if data.is_empty() && gap == 0 {
                // The prefix alone: the message follows in the next call.
                return;
            }
        }
    }
}

/// The header and first question: id, response flag, response code, name and type.
pub fn parse(msg: &[u8], truncated: bool) -> Head {
    let mut head = Head {
        truncated,
        ..Head::default()
    };
    if msg.len() < 12 {
        head.truncated = true;
        return head;
    }
    head.id = Some(u16::from_be_bytes([msg[0], msg[1]]));
    let response = msg[2] & 0x80 != 0;
    if response {
        head.status = Some((msg[3] & 0x0f) as u16);
    }
    let questions = u16::from_be_bytes([msg[4], msg[5]]);
    if questions == 0 {
        return head;
    }
    match question(&msg[12..]) {
        Some((name, qtype)) => {
            head.target = Some(name);
            head.method = Some(type_name(qtype));
        }
        None => head.truncated = true,
    }
    head
}

/// The first question's name (dotted, labels escaped as the conventions ask) and type. No
/// compression pointers: a question is the first name in a message.
fn question(b: &[u8]) -> Option<(String, u16)> {
    let mut name = String::new();
    let mut at = 0;
    loop {
        let len = *b.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 || name.len() > 255 {
            return None;
        }
        for &c in b.get(at..at + len)? {
            match c {
                b'.' | b'\\' | b'"' => {
                    name.push('\\');
                    name.push(c as char);
                }
                b'\t' => name.push_str("\\t"),
                b'\r' => name.push_str("\\r"),
                b'\n' => name.push_str("\\n"),
                32..=126 => name.push(c as char),
                _ => name.push_str(&format!("\\{c:03}")),
            }
        }
        name.push('.');
        at += len;
    }
    let qtype = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]);
    if name.len() > 1 {
        name.pop();
    } else {
        name = ".".to_string();
    }
    Some((name, qtype))
}

/// A query type's mnemonic (`TYPE<n>` for those not listed, as RFC 3597 writes them).
fn type_name(t: u16) -> String {
    let known = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        43 => "DS",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        257 => "CAA",
        _ => return format!("TYPE{t}"),
    };
    known.to_string()
}

/// A response code's name (RFC 6895 §2.3).
pub fn rcode_name(code: u16) -> String {
    let known = match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => return format!("RCODE{code}"),
    };
    known.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` of type `qtype`, built with `simple-dns`.
    fn query(id: u16, name: &str, qtype: simple_dns::TYPE) -> Vec<u8> {
        let mut p = simple_dns::Packet::new_query(id);
        p.questions.push(simple_dns::Question::new(
            simple_dns::Name::new_unchecked(name),
            qtype.into(),
            simple_dns::CLASS::IN.into(),
            false,
        ));
        p.build_bytes_vec().expect("build")
    }

    #[test]
    fn agrees_with_simple_dns_on_whole_messages() {
        for (name, qtype) in [
            ("a.example.test", simple_dns::TYPE::A),
            ("oxeye.dev", simple_dns::TYPE::AAAA),
            ("_http._tcp.svc", simple_dns::TYPE::SRV),
        ] {
            let bytes = query(0x1234, name, qtype);
            let theirs = simple_dns::Packet::parse(&bytes).expect("parse");
            let ours = parse(&bytes, false);
            assert_eq!(ours.id, Some(theirs.id()));
            assert_eq!(
                ours.target.as_deref(),
                Some(theirs.questions[0].qname.to_string().as_str())
            );
            assert_eq!(ours.method, Some(format!("{qtype:?}")));
            assert_eq!(ours.status, None, "a query has no response code");
        }
        // A response: NXDOMAIN.
        let asked = query(7, "nope.test", simple_dns::TYPE::A);
        let mut reply = simple_dns::Packet::parse(&asked)
            .expect("parse")
            .into_reply();
        *reply.rcode_mut() = simple_dns::RCODE::NameError;
        let bytes = reply.build_bytes_vec().expect("build");
        let ours = parse(&bytes, false);
        assert_eq!(ours.status, Some(3));
        assert_eq!(rcode_name(3), "NXDOMAIN");
    }

    #[test]
    fn a_cut_message_still_gives_its_header() {
        let bytes = query(9, "a.example.test", simple_dns::TYPE::A);
        let cut = parse(&bytes[..14], true);
        assert_eq!(cut.id, Some(9));
        assert!(cut.truncated);
        assert!(parse(&bytes[..5], true).id.is_none());
    }

    #[test]
    fn a_length_prefix_sent_apart_from_its_message() {
        let q = query(3, "split.test", simple_dns::TYPE::AAAA);
        let mut s = Stream::new(true);
        let mut out = Vec::new();
        s.feed(&(q.len() as u16).to_be_bytes(), 0, &mut out);
        assert!(out.is_empty());
        s.feed(&q, 0, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        match &out[0] {
            Piece::Began(h) => {
                assert_eq!(h.target.as_deref(), Some("split.test"));
                assert_eq!(h.id, Some(3));
            }
            other => panic!("{other:?}"),
        }
        // A prefix lost in a gap: the next call starts framing again.
        let mut out = Vec::new();
        s.feed(b"\x00", 40, &mut out);
        let mut two = (q.len() as u16).to_be_bytes().to_vec();
        two.extend_from_slice(&q);
        s.feed(&two, 0, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }

    #[test]
    fn tcp_messages_are_framed_by_their_length() {
        let q = query(1, "a.test", simple_dns::TYPE::A);
        let mut two = Vec::new();
        for _ in 0..2 {
            two.extend_from_slice(&(q.len() as u16).to_be_bytes());
            two.extend_from_slice(&q);
        }
        let mut s = Stream::new(true);
        let mut out = Vec::new();
        s.feed(&two, 0, &mut out);
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(!s.in_message());
    }
}
