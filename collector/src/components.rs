//! `oxeye components [TYPE]`: what this binary can build — every registered component type, or
//! one type's settings and defaults, read from the page its crate ships (`Factory::DOCS`).

use std::process::ExitCode;

use oxeye_api::Registration;

/// Writes into the `String` a command prints at its end.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}
macro_rules! outp {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = write!($out, $($arg)*);
    }};
}

/// Prints `text`; a closed pipe (`oxeye components | head`) ends the output quietly.
fn emit(text: &str) -> ExitCode {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// Every registered type: kind, type, signals, crate, description.
pub(crate) fn list() -> ExitCode {
    let mut regs: Vec<&Registration> = Registration::all().collect();
    regs.sort_by_key(|r| (r.kind, r.type_name));
    let mut out = String::new();
    outln!(
        out,
        "{:<10} {:<14} {:<26} {:<28} DESCRIPTION",
        "KIND",
        "TYPE",
        "SIGNALS",
        "CRATE"
    );
    for r in regs {
        outln!(
            out,
            "{:<10} {:<14} {:<26} {:<28} {}",
            r.kind.as_str(),
            r.type_name,
            signals(r, ","),
            r.crate_name,
            r.description
        );
    }
    emit(&out)
}

/// One type's description, signals and settings (the YAML blocks of its page).
pub(crate) fn show(type_name: &str) -> ExitCode {
    let mut regs: Vec<&Registration> = Registration::all()
        .filter(|r| r.type_name == type_name)
        .collect();
    if regs.is_empty() {
        let mut types: Vec<&str> = Registration::all().map(|r| r.type_name).collect();
        types.sort_unstable();
        types.dedup();
        eprintln!(
            "oxeye: error: no component type `{type_name}`; registered types: {}",
            types.join(", ")
        );
        return ExitCode::from(2);
    }
    regs.sort_by_key(|r| r.kind);
    let mut out = String::new();
    for (i, r) in regs.iter().enumerate() {
        if i > 0 {
            outln!(out, "\n");
        }
        outln!(out, "{} {}: {}", r.type_name, r.kind, r.description);
        outln!(
            out,
            "  signals: {}; crate: {}{}",
            signals(r, ", "),
            r.crate_name,
            if r.reconfigurable {
                "; applies config changes live"
            } else {
                ""
            }
        );
        if r.docs.is_empty() {
            outln!(
                out,
                "\n(the crate ships no settings page: see its own documentation)"
            );
            continue;
        }
        outp!(out, "{}", settings(r.docs));
        if r.crate_name.starts_with("oxeye-") {
            let page = format!("{}-{}", r.kind, r.type_name.replace('_', "-"));
            outln!(out, "\nThe whole reference: docs/components/{page}.md");
        }
    }
    emit(&out)
}

/// A component page for a terminal: its intro (links as their text), then each `yaml` block
/// under the heading it belongs to.
fn settings(md: &str) -> String {
    let link = |line: &str| {
        let mut out = String::new();
        let mut rest = line;
        while let Some(open) = rest.find('[') {
            let Some(mid) = rest[open..].find("](").map(|m| open + m) else {
                break;
            };
            let Some(close) = rest[mid..].find(')').map(|c| mid + c) else {
                break;
            };
            out.push_str(&rest[..open]);
            out.push_str(&rest[open + 1..mid]);
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out.replace("**", "")
    };
    let mut out = String::new();
    let mut heading = "Example".to_string();
    let mut intro = true;
    let mut lines = md.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(h) = trimmed.strip_prefix("## ").or(trimmed.strip_prefix("### ")) {
            intro = false;
            heading = h.trim().to_string();
        } else if trimmed.starts_with("```") {
            let indent = line.len() - trimmed.len();
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            if trimmed == "```yaml" {
                out.push_str(&format!("\n# {heading}\n"));
                for l in body {
                    out.push_str(l.get(indent..).unwrap_or(""));
                    out.push('\n');
                }
            }
            intro = false;
        } else if intro && !line.starts_with("# ") {
            out.push_str(&link(line));
            out.push('\n');
        }
    }
    out
}

/// `traces,metrics`; a connector's as `traces->metrics` (what it takes, then what it makes).
fn signals(r: &Registration, sep: &str) -> String {
    let list = |s: &[oxeye_api::Signal]| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(sep);
    if r.output_signals.is_empty() {
        list(r.signals)
    } else {
        format!("{}->{}", list(r.signals), list(r.output_signals))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_page_becomes_its_intro_and_yaml_blocks() {
        let md = "# `x` receiver\n\nMakes **spans**; see [kernels](../kernels.md).\n\n```yaml\nreceivers:\n  x: {rate: 1}\n```\n\n## Config\n\n- `rate`: per second\n\n```sh\nnot settings\n```\n\n1. step:\n\n   ```yaml\n   receivers:\n     x: {rate: 2}   # the default\n   ```\n";
        assert_eq!(
            super::settings(md),
            "\nMakes spans; see kernels.\n\n\n# Example\nreceivers:\n  x: {rate: 1}\n\n# Config\nreceivers:\n  x: {rate: 2}   # the default\n"
        );
    }
}
