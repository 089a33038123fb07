//! The plugin API's public surface is a checked-in snapshot (collector/api/public-api.txt), so
//! changing it is a deliberate act: rustdoc's JSON output (the pinned nightly) lists every public item.
//! After an intended change: `OXEYE_BLESS=1 cargo test -p oxeye-tests --test public_api`. A
//! change that can break a user's crate (an item gone, a function's signature changed, a variant
//! added to an exhaustive enum, a field to a struct built with a literal, a required method to a
//! trait) fails until oxeye-api's version is bumped (semver: 0.x bumps the minor) and the
//! CHANGELOG has that version.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn public_items() -> BTreeSet<String> {
    let target = Path::new(WORKSPACE).join("target/public-api");
    let nightly = oxeye_tests::pin("RUST_NIGHTLY");
    let out = Command::new("rustup")
        .args([
            "run",
            nightly.as_str(),
            "cargo",
            "rustdoc",
            "--offline",
            "-p",
            "oxeye-api",
            "--lib",
            "--features",
            "testing",
            "--",
            "-Z",
            "unstable-options",
            "--output-format",
            "json",
        ])
        .current_dir(WORKSPACE)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .output()
        .expect("rustdoc");
    assert!(
        out.status.success(),
        "rustdoc JSON failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(target.join("doc/oxeye_api.json")).expect("rustdoc JSON"),
    )
    .expect("JSON");
    let mut items = BTreeSet::new();
    // Top-level items with their full paths.
    for p in json["paths"].as_object().expect("paths").values() {
        if p["crate_id"] == 0 {
            let path: Vec<&str> = p["path"]
                .as_array()
                .expect("path")
                .iter()
                .filter_map(|s| s.as_str())
                .collect();
            if !path.iter().any(|seg| seg.starts_with("__")) {
                items.insert(format!(
                    "{} {}",
                    p["kind"].as_str().unwrap_or("?"),
                    path.join("::")
                ));
            }
        }
    }
    // Fields, variants, methods and associated items, by name and kind.
    let index = json["index"].as_object().expect("index");
    let name_of = |id: &serde_json::Value| -> String {
        let key = id
            .as_u64()
            .map(|n| n.to_string())
            .or_else(|| id.as_str().map(String::from));
        key.and_then(|k| index.get(&k))
            .and_then(|i| i["name"].as_str())
            .unwrap_or("?")
            .to_string()
    };
    // The type (and trait) each impl's items belong to, to tell methods of the same name apart.
    let mut owners = std::collections::HashMap::new();
    for (id, item) in index {
        if let Some(t) = item["inner"].get("trait") {
            let name = json["paths"][id.as_str()]["path"]
                .as_array()
                .and_then(|p| p.last())
                .and_then(|n| n.as_str())
                .unwrap_or("?")
                .to_string();
            for i in t["items"].as_array().into_iter().flatten() {
                let key = i.as_u64().map(|n| n.to_string());
                if let Some(k) = key.or_else(|| i.as_str().map(String::from)) {
                    owners.insert(k, name.clone());
                }
            }
        }
        let Some(imp) = item["inner"].get("impl") else {
            continue;
        };
        let mut owner = ty(&imp["for"]);
        if !imp["trait"].is_null() {
            owner = format!("<{owner} as {}>", last(&imp["trait"]["path"]));
        }
        for i in imp["items"].as_array().into_iter().flatten() {
            let key = i.as_u64().map(|n| n.to_string());
            if let Some(k) = key.or_else(|| i.as_str().map(String::from)) {
                owners.insert(k, owner.clone());
            }
        }
    }
    for (id, item) in index {
        let public = item["visibility"] == "public" || item["visibility"] == "default";
        let Some(name) = item["name"].as_str() else {
            continue;
        };
        if item["crate_id"] != 0 || !public || name.starts_with("__") {
            continue;
        }
        let kind = item["inner"]
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default();
        if matches!(
            kind.as_str(),
            "struct_field" | "variant" | "function" | "assoc_const" | "assoc_type"
        ) {
            items.insert(format!("member {kind} {name}"));
        }
        // A function's signature: changing what it takes or returns breaks a caller too.
        if kind == "function" {
            // Methods by their type or trait, free functions by their module path.
            let module: Option<String> = json["paths"][id.as_str()]["path"].as_array().map(|p| {
                let names: Vec<&str> = p.iter().skip(1).filter_map(|s| s.as_str()).collect();
                names[..names.len().saturating_sub(1)]
                    .iter()
                    .map(|s| format!("{s}::"))
                    .collect()
            });
            let owner = match (owners.get(id.as_str()), module) {
                (Some(o), _) => format!("{o}::"),
                (None, Some(m)) => m,
                (None, None) => String::new(),
            };
            items.insert(format!(
                "fn {owner}{name}{}",
                signature(&item["inner"]["function"])
            ));
        }
        // What a user's crate may rely on beyond the names: an exhaustive enum's variants (a
        // new one breaks their `match`), a struct they can build with a literal (a new field
        // breaks it), a trait's required methods (a new one breaks their impl).
        let path = json["paths"][id.as_str()]["path"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("::")
            })
            .unwrap_or_else(|| name.to_string());
        let non_exhaustive = item["attrs"].to_string().contains("non_exhaustive");
        let inner = &item["inner"][kind.as_str()];
        match kind.as_str() {
            "enum" if !non_exhaustive => {
                let variants: Vec<String> = inner["variants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(&name_of)
                    .collect();
                items.insert(format!(
                    "exhaustive enum {path} {{{}}}",
                    variants.join(", ")
                ));
            }
            "struct" if !non_exhaustive => {
                let plain = &inner["kind"]["plain"];
                if plain["has_stripped_fields"] == false {
                    let fields: Vec<String> = plain["fields"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(&name_of)
                        .collect();
                    items.insert(format!(
                        "constructible struct {path} {{{}}}",
                        fields.join(", ")
                    ));
                }
            }
            "trait" => {
                let required: Vec<String> = inner["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|i| {
                        let key = i
                            .as_u64()
                            .map(|n| n.to_string())
                            .or_else(|| i.as_str().map(String::from));
                        key.and_then(|k| index.get(&k)).is_some_and(|it| {
                            let inner = &it["inner"];
                            inner["function"]["has_body"] == false
                                || inner.get("assoc_type").is_some_and(|t| t["type"].is_null())
                                || inner
                                    .get("assoc_const")
                                    .is_some_and(|c| c["value"].is_null())
                        })
                    })
                    .map(&name_of)
                    .collect();
                items.insert(format!("trait {path} requires {{{}}}", required.join(", ")));
            }
            _ => {}
        }
    }
    items
}

/// A path's last segment (`crate::BoxError` and `BoxError` are the same type).
fn last(path: &serde_json::Value) -> String {
    let p = path.as_str().unwrap_or("?");
    p.rsplit("::").next().unwrap_or(p).to_string()
}

/// `<T: Bound>(a: A, b: B) -> R` of a rustdoc JSON function.
fn signature(f: &serde_json::Value) -> String {
    let params: Vec<String> = f["generics"]["params"]
        .as_array()
        .into_iter()
        .flatten()
        // `impl Trait` arguments show as themselves.
        .filter(|p| p["kind"]["type"]["is_synthetic"] != true)
        .map(|p| {
            let bounds = bounds(&p["kind"]["type"]["bounds"]);
            let name = p["name"].as_str().unwrap_or("?");
            if bounds.is_empty() {
                name.to_string()
            } else {
                format!("{name}: {bounds}")
            }
        })
        .collect();
    let generics = if params.is_empty() {
        String::new()
    } else {
        format!("<{}>", params.join(", "))
    };
    let inputs: Vec<String> = f["sig"]["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| ty(&i[1]))
        .collect();
    let output = match &f["sig"]["output"] {
        serde_json::Value::Null => String::new(),
        t => format!(" -> {}", ty(t)),
    };
    format!("{generics}({}){output}", inputs.join(", "))
}

fn bounds(b: &serde_json::Value) -> String {
    let all: Vec<String> = b
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| match b.get("trait_bound") {
            Some(t) => format!("{}{}", last(&t["trait"]["path"]), args(&t["trait"]["args"])),
            None => b["outlives"].as_str().unwrap_or("?").to_string(),
        })
        .collect();
    all.join(" + ")
}

fn args(a: &serde_json::Value) -> String {
    if let Some(p) = a.get("parenthesized") {
        let inputs: Vec<String> = p["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(ty)
            .collect();
        let output = match &p["output"] {
            serde_json::Value::Null => String::new(),
            t => format!(" -> {}", ty(t)),
        };
        return format!("({}){output}", inputs.join(", "));
    }
    let Some(list) = a.get("angle_bracketed") else {
        return String::new();
    };
    let mut all: Vec<String> = list["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| match (a.get("type"), a.get("lifetime")) {
            (Some(t), _) => ty(t),
            (_, Some(l)) => l.as_str().unwrap_or("?").to_string(),
            _ => stripped(a),
        })
        .collect();
    all.extend(
        list["constraints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{} = {}",
                    c["name"].as_str().unwrap_or("?"),
                    ty(&c["binding"]["equality"]["type"])
                )
            }),
    );
    if all.is_empty() {
        String::new()
    } else {
        format!("<{}>", all.join(", "))
    }
}

/// A rustdoc JSON type, written as Rust (the rare kinds as their JSON without ids).
fn ty(t: &serde_json::Value) -> String {
    let Some((kind, v)) = t.as_object().and_then(|o| o.iter().next()) else {
        return "?".into();
    };
    match kind.as_str() {
        "primitive" | "generic" => v.as_str().unwrap_or("?").to_string(),
        "resolved_path" => format!("{}{}", last(&v["path"]), args(&v["args"])),
        "borrowed_ref" => format!(
            "&{}{}{}",
            v["lifetime"]
                .as_str()
                .map_or(String::new(), |l| format!("{l} ")),
            if v["is_mutable"] == true { "mut " } else { "" },
            ty(&v["type"])
        ),
        "tuple" => {
            let all: Vec<String> = v.as_array().into_iter().flatten().map(ty).collect();
            format!("({})", all.join(", "))
        }
        "slice" => format!("[{}]", ty(v)),
        "array" => format!("[{}; {}]", ty(&v["type"]), v["len"].as_str().unwrap_or("?")),
        "raw_pointer" => format!(
            "*{} {}",
            if v["is_mutable"] == true {
                "mut"
            } else {
                "const"
            },
            ty(&v["type"])
        ),
        "impl_trait" => format!("impl {}", bounds(v)),
        "dyn_trait" => {
            let traits: Vec<String> = v["traits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| format!("{}{}", last(&t["trait"]["path"]), args(&t["trait"]["args"])))
                .collect();
            format!("dyn {}", traits.join(" + "))
        }
        "function_pointer" => format!("fn{}", signature(v)),
        "qualified_path" => {
            let on = ty(&v["self_type"]);
            let name = v["name"].as_str().unwrap_or("?");
            match last(&v["trait"]["path"]).as_str() {
                "" => format!("{on}::{name}"),
                t => format!("<{on} as {t}>::{name}"),
            }
        }
        _ => stripped(t),
    }
}

/// JSON without rustdoc's ids (they change whenever any item is added).
fn stripped(v: &serde_json::Value) -> String {
    fn strip(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(k, _)| k.as_str() != "id")
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
            serde_json::Value::Array(a) => a.iter().map(strip).collect(),
            v => v.clone(),
        }
    }
    strip(v).to_string()
}

/// `version = "x.y.z"` of oxeye-api's Cargo.toml.
fn crate_version() -> String {
    let toml = std::fs::read_to_string(Path::new(WORKSPACE).join("collector/api/Cargo.toml"))
        .expect("Cargo.toml");
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("oxeye-api has a version of its own")
        .to_string()
}

#[test]
fn public_api_matches_the_snapshot() {
    let snapshot = Path::new(WORKSPACE).join("collector/api/public-api.txt");
    let version = crate_version();
    let now: Vec<String> = public_items().into_iter().collect();
    let text = format!("version {version}\n{}\n", now.join("\n"));
    if std::env::var_os("OXEYE_BLESS").is_some() {
        std::fs::write(&snapshot, &text).expect("write snapshot");
        return;
    }
    let before = std::fs::read_to_string(&snapshot).unwrap_or_default();
    let blessed_version = before
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("version "))
        .unwrap_or("none")
        .to_string();
    let old: BTreeSet<&str> = before.lines().skip(1).collect();
    let new: BTreeSet<&str> = text.lines().skip(1).collect();
    let added: Vec<&&str> = new.difference(&old).collect();
    let removed: Vec<&&str> = old.difference(&new).collect();
    // Anything gone or changed (an exhaustive enum's variants, a constructible struct's fields,
    // a trait's required methods) can break a user's crate: a new version first.
    assert!(
        removed.is_empty() || version != blessed_version,
        "a breaking change to oxeye-api's public API: bump its version in collector/api/Cargo.toml (it is {version}), say what changed in collector/api/CHANGELOG.md, then bless the snapshot (OXEYE_BLESS=1 cargo test -p oxeye-tests --test public_api).\nremoved or changed: {removed:#?}\nadded: {added:#?}"
    );
    assert!(
        added.is_empty() && removed.is_empty() && version == blessed_version,
        "oxeye-api's public API changed.\nadded: {added:#?}\nremoved: {removed:#?}\nIf intended, note it in collector/api/CHANGELOG.md and update the snapshot: OXEYE_BLESS=1 cargo test -p oxeye-tests --test public_api"
    );
}

#[test]
fn the_changelog_names_the_current_version() {
    let changelog =
        std::fs::read_to_string(Path::new(WORKSPACE).join("collector/api/CHANGELOG.md"))
            .expect("collector/api/CHANGELOG.md");
    let version = crate_version();
    assert!(
        changelog.contains(&format!("## {version}")),
        "collector/api/CHANGELOG.md has no `## {version}` section"
    );
}
