//! A processor crate written outside the oxeye workspace (tests/plugin-template, copied to a
//! temporary directory): it depends on oxeye-api and oxeye by path, a binary links it, and a
//! pipeline from YAML uses it — with no change to oxeye's sources. Also: the errors a plugin
//! author meets (duplicate type, bad config, panic).

use std::path::{Path, PathBuf};
use std::process::Command;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn copy_template(dst: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin-template");
    let oxeye = std::fs::canonicalize(WORKSPACE).expect("workspace");
    for rel in [
        "Cargo.toml.in",
        "shout/Cargo.toml.in",
        "shout/src/lib.rs",
        "my-oxeye/Cargo.toml.in",
        "my-oxeye/src/main.rs",
    ] {
        let text = std::fs::read_to_string(src.join(rel)).expect("template file");
        let out = dst.join(rel.trim_end_matches(".in"));
        std::fs::create_dir_all(out.parent().expect("parent")).expect("dir");
        std::fs::write(out, text.replace("@OXEYE@", &oxeye.display().to_string())).expect("write");
    }
    // Same dependency versions and toolchain as oxeye (a fresh resolution could pick crates that
    // need a newer compiler).
    for f in ["Cargo.lock", "rust-toolchain.toml"] {
        std::fs::copy(oxeye.join(f), dst.join(f)).expect("copy");
    }
}

fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Its own target dir: the outer `cargo test` holds the workspace's.
    let target = Path::new(WORKSPACE).join("target/plugin-test");
    Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo")
}

fn build(dir: &Path, features: &[&str]) -> PathBuf {
    let mut args = vec!["build", "--offline", "-p", "my-oxeye"];
    if !features.is_empty() {
        args.extend(["--features", features[0]]);
    }
    let out = cargo(dir, &args);
    assert!(
        out.status.success(),
        "building the plugin binary failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Path::new(WORKSPACE).join("target/plugin-test/debug/my-oxeye")
}

#[test]
fn a_processor_crate_from_outside_the_tree() {
    let dir = std::env::temp_dir().join(format!("oxeye-plugin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_template(&dir);

    // The plugin's own unit test, through the API crate's harness.
    let out = cargo(&dir, &["test", "--offline", "-p", "shout"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bin = build(&dir, &[]);
    let components = Command::new(&bin)
        .arg("components")
        .output()
        .expect("components");
    let listing = String::from_utf8_lossy(&components.stdout);
    assert!(
        listing.contains("processor  shout        traces"),
        "{listing}"
    );
    assert!(
        listing.contains("shout  ") || listing.contains(" shout "),
        "{listing}"
    );
    assert!(
        listing.contains("receiver   synthetic"),
        "built-ins are still there: {listing}"
    );

    let cfg = dir.join("pipeline.yaml");
    let pipeline = |extra: &str| {
        format!(
            "receivers:\n  synthetic: {{seed: 3, spans: {{count: 200}}}}\nprocessors:\n  shout: {{times: 2{extra}}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  pipelines:\n    traces: {{receivers: [synthetic], processors: [shout], exporters: [stdout]}}\n"
        )
    };
    std::fs::write(&cfg, pipeline("")).expect("config");
    let run = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 200);
    for s in &lines {
        let name = s["name"].as_str().expect("name");
        assert!(
            name.ends_with("!!") && name == name.to_uppercase(),
            "{name}"
        );
        assert_eq!(s["shout.seen"], true);
    }

    // A config the plugin's validation rejects: file, line, YAML path, message.
    std::fs::write(&cfg, pipeline("").replace("times: 2", "times: 0")).expect("config");
    let v = Command::new(&bin)
        .args(["validate", "-c"])
        .arg(&cfg)
        .output()
        .expect("validate");
    let err = String::from_utf8_lossy(&v.stderr);
    assert_eq!(v.status.code(), Some(2), "{err}");
    assert!(
        err.contains(":4:") && err.contains("processors.shout.times: must be at least 1"),
        "{err}"
    );

    // A plugin that panics: reported with its id, orderly shutdown, exit 1.
    std::fs::write(&cfg, pipeline(", panic_on: handle_request")).expect("config");
    let run = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(
        err.contains("processors/shout[traces]")
            && err.contains("panicked: shout: told to panic on handle_request"),
        "{err}"
    );

    // Two crates registering the same type: a startup error naming both.
    let bin = build(&dir, &["duplicate"]);
    let out = Command::new(&bin)
        .arg("components")
        .output()
        .expect("components");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("processor type `nop` is registered twice"),
        "{err}"
    );
    assert!(
        err.contains("`oxeye-processor-nop`") && err.contains("`shout`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
