//! `pipeline.yaml`: env expansion (`env`), parsing with positions (`locate`), validation
//! (`validate`) into the model the engine runs (`model`).
//!
//! Validation collects every problem at once. Each [`Diagnostic`] carries the file, line and
//! column (where known), the YAML path (`processors.sampling/slow.ratio`) and what was expected.
//! Nothing is started here: component configs are deserialized and validated, never built.

mod env;
mod locate;
mod model;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

use oxeye_api::{Kind, Registration};
use serde_yaml::Value as Yaml;

pub use model::*;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The config cannot run.
    Error,
    /// The config runs, but something is probably unintended.
    Warning,
}

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file name as given.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// YAML path (`service.pipelines.traces.exporters[1]`); empty for the whole file.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {sev}: ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// The outcome of loading a config: the config when valid, and every diagnostic.
#[derive(Debug)]
pub struct Loaded {
    /// `Some` when there are no errors.
    pub config: Option<Config>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
    file: String,
    locations: locate::Locations,
}

impl Loaded {
    /// An error found later (building a component) at `path` of this file, with its position;
    /// `offset` is a character inside the string value at `path`.
    pub fn error_at(&self, path: &str, offset: Option<usize>, message: &str) -> Diagnostic {
        self.locations.diagnostic(
            &self.file,
            Severity::Error,
            path.to_string(),
            offset,
            message.to_string(),
        )
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

/// Registered factories of `kind`, by type name.
pub fn registered(kind: Kind) -> BTreeMap<&'static str, &'static Registration> {
    Registration::all()
        .filter(|r| r.kind == kind)
        .map(|r| (r.type_name, r))
        .collect()
}

/// Two crates registering the same kind and type name: one message per clash, naming both.
pub fn duplicate_registrations() -> Vec<String> {
    let mut seen: BTreeMap<(Kind, &str), &Registration> = BTreeMap::new();
    let mut clashes = Vec::new();
    for r in Registration::all() {
        if let Some(first) = seen.insert((r.kind, r.type_name), r) {
            clashes.push(format!(
                "{} type `{}` is registered twice: by crate `{}` and by crate `{}`; rename one of them",
                r.kind, r.type_name, first.crate_name, r.crate_name
            ));
        }
    }
    clashes
}

/// The YAML path of `field` (a path inside a component's config, as in [`oxeye_api::FieldError`])
/// under the component at `component` (`receivers.ebpf`).
pub fn field_path(component: &str, field: &str) -> String {
    if field.is_empty() {
        component.to_string()
    } else if field.starts_with('[') {
        format!("{component}{field}")
    } else {
        format!("{component}.{field}")
    }
}

/// Loads a config from text, using the process environment for `${env:...}`.
pub fn load(file: &str, text: &str) -> Loaded {
    load_with_env(file, text, &|name| std::env::var(name).ok())
}

/// Loads a config from text with an explicit environment (tests).
pub fn load_with_env(file: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Loaded {
    let (expanded, env_errors) = env::expand_env(text, env);
    let mut ctx = validate::Ctx {
        file,
        locations: locate::Locations::parse(&expanded),
        diagnostics: Vec::new(),
    };
    for e in env_errors {
        let (line, col) = env::line_col(text, e.offset);
        let path = ctx.locations.path_at_line(line).unwrap_or("").to_string();
        ctx.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_string(),
            line: Some(line),
            column: Some(col),
            path,
            message: e.message,
        });
    }
    let root: Yaml = match serde_yaml::from_str(&expanded) {
        Ok(v) => v,
        Err(e) => {
            let loc = e.location();
            ctx.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_string(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                path: String::new(),
                message: format!("not valid YAML: {e}"),
            });
            return Loaded {
                config: None,
                diagnostics: ctx.diagnostics,
                file: file.to_string(),
                locations: ctx.locations,
            };
        }
    };
    let config = validate::validate(&mut ctx, &root);
    let locations = ctx.locations;
    let mut diagnostics = ctx.diagnostics;
    diagnostics.sort_by_key(|d| (d.line.unwrap_or(usize::MAX), d.column.unwrap_or(0)));
    let ok = !diagnostics.iter().any(|d| d.severity == Severity::Error);
    Loaded {
        config: config.filter(|_| ok),
        diagnostics,
        file: file.to_string(),
        locations,
    }
}
