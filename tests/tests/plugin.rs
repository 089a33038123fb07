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
    guide_crate(dst, &oxeye);
    // Same dependency versions and toolchain as oxeye (a fresh resolution could pick crates that
    // need a newer compiler).
    for f in ["Cargo.lock", "rust-toolchain.toml"] {
        std::fs::copy(oxeye.join(f), dst.join(f)).expect("copy");
    }
}

/// The fenced blocks of `lang` in `text`, in order.
fn fenced(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("```{lang}") {
            let indent = line.len() - line.trim_start().len();
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| l.trim() != "```")
                .map(|l| l.get(indent..).unwrap_or("").trim_end())
                .collect();
            blocks.push(body.join("\n") + "\n");
        }
    }
    blocks
}

/// The plugin guide's own example (docs/plugins.md: the Cargo.toml of step 1, "A processor in
/// one file" and its harness test), written as the crate `my-tag-processor` that a reader would
/// make from it — so the guide cannot rot.
fn guide_crate(dst: &Path, oxeye: &Path) {
    let guide = std::fs::read_to_string(Path::new(WORKSPACE).join("docs/plugins.md"))
        .expect("docs/plugins.md");
    let toml = fenced(&guide, "toml");
    let one_file = &guide[guide
        .find("## A processor in one file")
        .expect("the one-file section")..];
    let rust = fenced(one_file, "rust");
    assert!(
        rust.len() >= 2,
        "the guide's processor and its harness test"
    );
    let dir = dst.join("my-tag-processor");
    std::fs::create_dir_all(dir.join("src")).expect("dir");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"my-tag-processor\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n{}",
            toml[0].replace("/path/to/oxeye", &oxeye.display().to_string())
        ),
    )
    .expect("write");
    let test = rust[1]
        .lines()
        .map(|l| format!("        {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        dir.join("src/lib.rs"),
        format!(
            "{}\n#[cfg(test)]\nmod guide_test {{\n    use super::*;\n\n    #[test]\n    fn as_the_guide_shows() -> Result<(), oxeye_api::BoxError> {{\n{test}\n        assert_eq!(out.len(), 1);\n        Ok(())\n    }}\n}}\n",
            rust[0]
        ),
    )
    .expect("write");
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

/// `bin run -c cfg`, which must succeed: its JSON lines.
fn json_lines_of(bin: &Path, cfg: &Path) -> Vec<serde_json::Value> {
    let run = Command::new(bin)
        .args(["run", "-c"])
        .arg(cfg)
        .output()
        .expect("run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

#[test]
fn a_processor_crate_from_outside_the_tree() {
    let dir = std::env::temp_dir().join(format!("oxeye-plugin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_template(&dir);

    // The plugins' own unit tests, through the API crate's harness: the template's and the
    // guide's.
    for plugin in ["shout", "my-tag-processor"] {
        let out = cargo(&dir, &["test", "--offline", "-p", plugin]);
        assert!(
            out.status.success(),
            "{plugin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let bin = build(&dir, &[]);
    let components = Command::new(&bin)
        .arg("components")
        .output()
        .expect("components");
    let listing = String::from_utf8_lossy(&components.stdout);
    let listed = |kind: &str, name: &str, signals: &str| {
        listing
            .lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == [kind, name, signals])
    };
    assert!(listed("processor", "shout", "traces"), "{listing}");
    assert!(
        listing.contains("shout  ") || listing.contains(" shout "),
        "{listing}"
    );
    assert!(
        listing.contains("receiver   synthetic"),
        "built-ins are still there: {listing}"
    );
    assert!(
        listed("processor", "tag", "traces"),
        "the guide's processor: {listing}"
    );

    // The guide's pipeline fragment, in a whole pipeline.
    let guide = std::fs::read_to_string(Path::new(WORKSPACE).join("docs/plugins.md"))
        .expect("docs/plugins.md");
    let fragment = fenced(&guide, "yaml")
        .into_iter()
        .find(|y| y.contains("tag:"))
        .expect("the guide's pipeline");
    let tagged = dir.join("tag.yaml");
    std::fs::write(
        &tagged,
        format!(
            "receivers:\n  synthetic: {{seed: 3, spans: {{count: 20}}}}\nexporters:\n  stdout: {{format: json}}\n{fragment}"
        ),
    )
    .expect("config");
    let spans = json_lines_of(&bin, &tagged);
    assert_eq!(spans.len(), 20);
    assert!(spans.iter().all(|s| s["team"] == "red"), "{spans:?}");

    let cfg = dir.join("pipeline.yaml");
    let pipeline = |extra: &str| {
        format!(
            "receivers:\n  synthetic: {{seed: 3, spans: {{count: 200}}}}\nprocessors:\n  shout: {{times: 2{extra}}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  pipelines:\n    traces: {{receivers: [synthetic], processors: [shout], exporters: [stdout]}}\n"
        )
    };
    std::fs::write(&cfg, pipeline("")).expect("config");
    let lines = json_lines_of(&bin, &cfg);
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
