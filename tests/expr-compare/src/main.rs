//! The issue's two expression benchmarks — filter on one attribute, set one attribute — on the
//! same 1024 HTTP-shaped spans (warm in cache), evaluated 1000 times each, by:
//! oxeye-ottl (the records as they are), cel-interpreter 0.10 and VRL (each needs the record in
//! its own value type: the conversion is timed separately, since it is paid once per record).

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use oxeye_api::{Resource, Span, Value};
use oxeye_ottl::{Condition, Context, Record, RecordMut, ResourceRef, Statement};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 1000;

fn spans() -> Vec<Span> {
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
    (0..1024)
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

fn per_record(t: Instant, n: usize) -> f64 {
    t.elapsed().as_nanos() as f64 / n as f64
}

fn cel_value(v: &Value) -> cel_interpreter::Value {
    match v {
        Value::Str(s) => cel_interpreter::Value::String(Arc::new(s.to_string())),
        Value::Int(i) => cel_interpreter::Value::Int(*i),
        Value::F64(f) => cel_interpreter::Value::Float(*f),
        Value::Bool(b) => cel_interpreter::Value::Bool(*b),
        Value::Bytes(b) => cel_interpreter::Value::Bytes(Arc::new(b.to_vec())),
    }
}

fn cel_attrs(s: &Span) -> cel_interpreter::Value {
    let map: HashMap<String, cel_interpreter::Value> = s
        .attributes
        .iter()
        .map(|(k, v)| (k.to_string(), cel_value(v)))
        .collect();
    map.into()
}

fn vrl_value(v: &Value) -> vrl::value::Value {
    match v {
        Value::Str(s) => vrl::value::Value::from(s.as_ref()),
        Value::Int(i) => vrl::value::Value::from(*i),
        Value::F64(f) => vrl::value::Value::from_f64_or_zero(*f),
        Value::Bool(b) => vrl::value::Value::from(*b),
        Value::Bytes(b) => vrl::value::Value::from(b.to_vec()),
    }
}

fn vrl_record(s: &Span) -> vrl::value::Value {
    let attrs: BTreeMap<vrl::value::KeyString, vrl::value::Value> = s
        .attributes
        .iter()
        .map(|(k, v)| (k.into(), vrl_value(v)))
        .collect();
    let mut root = BTreeMap::new();
    root.insert("name".into(), vrl::value::Value::from(s.name.as_ref()));
    root.insert("attributes".into(), vrl::value::Value::Object(attrs));
    vrl::value::Value::Object(root)
}

fn main() {
    let input = spans();
    let n = input.len() * ROUNDS;
    let res = Resource::default();
    println!("{n} evaluations per row (1024 spans x {ROUNDS}), ns per record");

    // oxeye-ottl.
    let cond =
        Condition::compile(r#"attributes["http.route"] == "/health""#, Context::Span).unwrap();
    let t = Instant::now();
    let mut hits = 0usize;
    for _ in 0..ROUNDS {
        for s in &input {
            hits += cond.eval(Record::Span(black_box(s)), &res).unwrap() as usize;
        }
    }
    println!("oxeye-ottl      filter  attributes[\"http.route\"] == \"/health\"   {:>7.1}  ({hits} true)", per_record(t, n));
    let st = Statement::compile(
        r#"set(attributes["deployment.environment"], "prod")"#,
        Context::Span,
    )
    .unwrap();
    let mut elapsed = 0.0;
    for _ in 0..ROUNDS {
        let mut batch = input.clone();
        let t = Instant::now();
        for s in &mut batch {
            st.apply(RecordMut::Span(s), &mut ResourceRef::Shared(&res))
                .unwrap();
        }
        elapsed += t.elapsed().as_nanos() as f64;
        black_box(&batch);
    }
    println!(
        "oxeye-ottl      set     attributes[\"deployment.environment\"]       {:>7.1}",
        elapsed / n as f64
    );

    // cel-interpreter: the record must become a CEL map first.
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for s in &input {
            black_box(cel_attrs(black_box(s)));
        }
    }
    let convert = per_record(t, n);
    let program =
        cel_interpreter::Program::compile(r#"attributes["http.route"] == "/health""#).unwrap();
    let converted: Vec<cel_interpreter::Value> = input.iter().map(cel_attrs).collect();
    // Built-in functions are registered once, in a parent scope; each record gets a child.
    let root = cel_interpreter::Context::default();
    let t = Instant::now();
    let mut hits = 0usize;
    for _ in 0..ROUNDS {
        for attrs in &converted {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_from_value("attributes", attrs.clone());
            hits += (program.execute(&ctx).unwrap() == cel_interpreter::Value::Bool(true)) as usize;
        }
    }
    let eval = per_record(t, n);
    println!("cel-interpreter filter  (same condition)                          {:>7.1}  = {convert:.1} to convert + {eval:.1} to evaluate ({hits} true)", convert + eval);

    // VRL: the record must become a VRL object; the set runs on that object.
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for s in &input {
            black_box(vrl_record(black_box(s)));
        }
    }
    let convert = per_record(t, n);
    let compile = |src: &str| vrl::compiler::compile(src, &[]).expect("compiles").program;
    let filter = compile(r#".attributes."http.route" == "/health""#);
    let set = compile(r#".attributes."deployment.environment" = "prod""#);
    let converted: Vec<vrl::value::Value> = input.iter().map(vrl_record).collect();
    let tz = vrl::compiler::TimeZone::default();
    let mut runtime = vrl::compiler::runtime::Runtime::default();
    let mut hits = 0usize;
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for v in &converted {
            let mut target = vrl::compiler::TargetValue {
                value: v.clone(),
                metadata: vrl::value::Value::Object(BTreeMap::new()),
                secrets: vrl::value::Secrets::default(),
            };
            let out = runtime.resolve(&mut target, &filter, &tz).unwrap();
            runtime.clear();
            hits += (out == vrl::value::Value::Boolean(true)) as usize;
        }
    }
    let eval = per_record(t, n);
    println!("vrl             filter  (same condition)                          {:>7.1}  = {convert:.1} to convert + {eval:.1} to evaluate, clone included ({hits} true)", convert + eval);
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for v in &converted {
            let mut target = vrl::compiler::TargetValue {
                value: v.clone(),
                metadata: vrl::value::Value::Object(BTreeMap::new()),
                secrets: vrl::value::Secrets::default(),
            };
            runtime.resolve(&mut target, &set, &tz).unwrap();
            runtime.clear();
            black_box(target);
        }
    }
    let eval = per_record(t, n);
    println!("vrl             set     (same attribute)                          {:>7.1}  = {convert:.1} to convert + {eval:.1} to run, clone included (and back to a span: not counted)", convert + eval);
}
