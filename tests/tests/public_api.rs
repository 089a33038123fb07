//! The plugin API's public surface is a checked-in snapshot (collector/api/public-api.txt), so
//! changing it is a deliberate act: rustdoc's JSON output (nightly) lists every public item.
//! After an intended change: `OXEYE_BLESS=1 cargo test -p oxeye-tests --test public_api`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn public_items() -> BTreeSet<String> {
    let target = Path::new(WORKSPACE).join("target/public-api");
    let out = Command::new("rustup")
        .args([
            "run",
            "nightly",
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
    for item in json["index"].as_object().expect("index").values() {
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
    }
    items
}

#[test]
fn public_api_matches_the_snapshot() {
    let snapshot = Path::new(WORKSPACE).join("collector/api/public-api.txt");
    let now: Vec<String> = public_items().into_iter().collect();
    let text = now.join("\n") + "\n";
    if std::env::var_os("OXEYE_BLESS").is_some() {
        std::fs::write(&snapshot, &text).expect("write snapshot");
        return;
    }
    let before = std::fs::read_to_string(&snapshot).unwrap_or_default();
    let old: BTreeSet<&str> = before.lines().collect();
    let new: BTreeSet<&str> = text.lines().collect();
    let added: Vec<&&str> = new.difference(&old).collect();
    let removed: Vec<&&str> = old.difference(&new).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "oxeye-api's public API changed.\nadded: {added:#?}\nremoved: {removed:#?}\nIf intended, update the snapshot: OXEYE_BLESS=1 cargo test -p oxeye-tests --test public_api"
    );
}
