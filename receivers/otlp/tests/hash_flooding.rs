//! A request crafted to collide in an unkeyed hash — 100 000 attribute keys sharing the low 20
//! bits of FNV-1a, the hasher the receiver's interners used — decodes in the time of one with
//! random keys: the interners' hasher is keyed with a random seed.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

const BITS: u32 = 20;
const MASK: u64 = (1 << BITS) - 1;
const PRIME: u64 = 0x0100_0000_01b3;
const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a_from(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ b as u64).wrapping_mul(PRIME))
}

/// FNV-1a as a `Hasher`, the way the receiver used it: keys go through their `Hash` impls
/// (`[u8]` writes its length first, `str` a 0xff after).
#[derive(Default)]
struct Fnv(Option<u64>);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0.unwrap_or(OFFSET)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = Some(fnv1a_from(self.finish(), bytes));
    }
}

fn fnv_hash<T: std::hash::Hash + ?Sized>(key: &T) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<Fnv>::default().hash_one(key)
}

/// Every key is this long: `attr.NNNNNN.` and four bytes.
const KEY_LEN: usize = 16;

/// The inverse of FNV's prime modulo 2^64 (Newton's iteration; the prime is odd).
fn inverse(p: u64) -> u64 {
    let mut x = p;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(p.wrapping_mul(x)));
    }
    x
}

/// `n` distinct printable keys whose FNV-1a hashes, started from `start`, share their low 20
/// bits: a unique prefix, then four bytes found by meeting in the middle (the low bits of FNV-1a
/// depend only on the low bits of its state, and its steps can be undone).
fn colliding_keys(n: usize, start: u64) -> Vec<String> {
    let target = 0x5_a5a5 & MASK;
    let inv = inverse(PRIME);
    let printable: Vec<u8> = (b'0'..=b'z').collect();
    // Backwards from the target through two bytes: the states two bytes before the end.
    let mut back: std::collections::HashMap<u64, Vec<(u8, u8)>> = Default::default();
    for &b4 in &printable {
        for &b3 in &printable {
            let s3 = (target.wrapping_mul(inv) ^ b4 as u64) & MASK;
            let s2 = (s3.wrapping_mul(inv) ^ b3 as u64) & MASK;
            back.entry(s2).or_default().push((b3, b4));
        }
    }
    let mut keys = Vec::with_capacity(n);
    let mut prefix = 0u64;
    while keys.len() < n {
        let p = format!("attr.{prefix:06}.");
        prefix += 1;
        let sp = fnv1a_from(start, p.as_bytes());
        for &b1 in &printable {
            for &b2 in &printable {
                let s2 = ((sp ^ b1 as u64).wrapping_mul(PRIME) ^ b2 as u64).wrapping_mul(PRIME);
                for &(b3, b4) in back.get(&(s2 & MASK)).into_iter().flatten() {
                    let key = format!("{p}{}", String::from_utf8_lossy(&[b1, b2, b3, b4]));
                    keys.push(key);
                }
            }
        }
    }
    keys.truncate(n);
    keys
}

/// `n` keys of the same shape with nothing in common.
fn random_keys(n: usize) -> Vec<String> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("attr.{:06}.{:04x}", i % 1_000_000, x as u16)
        })
        .collect()
}

fn request(keys: &[String]) -> ExportTraceServiceRequest {
    let attributes = keys
        .iter()
        .map(|k| KeyValue {
            key: k.clone(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(1)),
            }),
        })
        .collect();
    let span = Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "flood".into(),
        attributes,
        ..Span::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// The fastest of three runs of `f`.
fn time(mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed()
        })
        .min()
        .unwrap_or_default()
}

#[test]
fn a_request_of_colliding_keys_decodes_in_linear_time() {
    const N: usize = 100_000;
    // The protobuf decoder interns `&[u8]` (hashed after their length), JSON `String`s.
    let for_bytes = colliding_keys(N, fnv1a_from(OFFSET, &KEY_LEN.to_ne_bytes()));
    let for_strings = colliding_keys(N, OFFSET);
    for (keys, hash) in [
        (
            &for_bytes,
            &(|k: &String| fnv_hash(k.as_bytes())) as &dyn Fn(&String) -> u64,
        ),
        (&for_strings, &|k: &String| fnv_hash(k.as_str())),
    ] {
        assert_eq!(keys.len(), N);
        assert!(keys.iter().all(|k| k.len() == KEY_LEN));
        let low = hash(&keys[0]) & MASK;
        assert!(keys.iter().all(|k| hash(k) & MASK == low), "they collide");
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), N, "the crafted keys are distinct");
    }
    let crafted = for_bytes;

    let crafted = bytes::Bytes::from(request(&crafted).encode_to_vec());
    let random = bytes::Bytes::from(request(&random_keys(N)).encode_to_vec());
    let decode = |buf: &bytes::Bytes| {
        let c = oxeye_receiver_otlp::wire::request(buf).expect("decodes");
        assert_eq!(c.accepted, 1);
    };
    let (t_crafted, t_random) = (time(|| decode(&crafted)), time(|| decode(&random)));
    println!("protobuf: 100 000 colliding keys {t_crafted:?}, random keys {t_random:?}");
    assert!(
        t_crafted < t_random * 3 + Duration::from_millis(20),
        "colliding keys {t_crafted:?} vs random {t_random:?}"
    );

    // JSON goes through the other interner.
    let json = |keys: &[String]| {
        let body = serde_json::to_vec(&request(keys)).expect("json");
        move || {
            let r = oxeye_receiver_otlp::convert::from_json(&body, "trace").expect("json decodes");
            assert_eq!(oxeye_receiver_otlp::convert::request(r).accepted, 1);
        }
    };
    let (t_crafted, t_random) = (time(json(&for_strings)), time(json(&random_keys(N))));
    println!("JSON: 100 000 colliding keys {t_crafted:?}, random keys {t_random:?}");
    assert!(
        t_crafted < t_random * 3 + Duration::from_millis(50),
        "colliding keys {t_crafted:?} vs random {t_random:?}"
    );
}
