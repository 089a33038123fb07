//! Per-record cost of conditions and statements, without the pipeline around them.
//!
//!     cargo bench -p oxeye-ottl --bench eval

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use oxeye_api::{Resource, Span, Value};
use oxeye_ottl::{Condition, Context, Record, RecordMut, ResourceRef, Statement};

fn spans(n: usize) -> Vec<Span> {
    let routes = ["/api/items", "/health", "/api/orders", "/api/users/{id}"];
    let keys: Vec<Arc<str>> = [
        "http.request.method",
        "http.route",
        "http.response.status_code",
        "server.address",
        "url.scheme",
    ]
    .iter()
    .map(|&k| Arc::from(k))
    .collect();
    (0..n)
        .map(|i| Span {
            name: "GET /api/items/42".into(),
            start_unix_ns: 1000,
            end_unix_ns: 1000 + (i as u64 % 100_000),
            attributes: [
                (keys[0].clone(), Value::from("GET")),
                (keys[1].clone(), Value::from(routes[i % 4])),
                (keys[2].clone(), Value::Int(200)),
                (keys[3].clone(), Value::from("api.internal")),
                (keys[4].clone(), Value::from("https")),
            ]
            .into_iter()
            .collect(),
            ..Span::default()
        })
        .collect()
}

fn main() {
    // One pipeline batch (1024 records, warm in cache), evaluated many times.
    let input = spans(1024);
    // `cargo test --all-targets` runs this without `--bench`: a quick pass so it cannot rot.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        1000
    } else {
        2
    };
    let n = input.len() * rounds;
    let res = Resource::default();
    for text in [
        r#"attributes["http.route"] == "/health""#,
        r#"attributes["http.route"] == "/health" or (status == STATUS_CODE_UNSET and duration < 50000)"#,
    ] {
        let c = Condition::compile(text, Context::Span).expect("compiles");
        let t = Instant::now();
        let mut hits = 0;
        for _ in 0..rounds {
            for s in &input {
                hits += c.eval(Record::Span(black_box(s)), &res).expect("evaluates") as usize;
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!("condition {text:<90} {ns:>6.1} ns/record ({hits} true)");
    }
    for text in [
        r#"set(attributes["deployment.environment"], "prod")"#,
        r#"replace_pattern(name, "/[0-9]+", "/{id}")"#,
    ] {
        let st = Statement::compile(text, Context::Span).expect("compiles");
        let mut elapsed = std::time::Duration::ZERO;
        for _ in 0..rounds {
            let mut batch = input.clone();
            let t = Instant::now();
            for s in &mut batch {
                st.apply(RecordMut::Span(s), &mut ResourceRef::Shared(&res))
                    .expect("applies");
            }
            elapsed += t.elapsed();
            black_box(&batch);
        }
        let ns = elapsed.as_nanos() as f64 / n as f64;
        println!("statement {text:<90} {ns:>6.1} ns/record");
    }
}
