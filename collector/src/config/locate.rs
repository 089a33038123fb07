//! Where each YAML path is in the text: serde_yaml keeps no positions, so a second, marked
//! event parse (yaml-rust2) records the line and column of every key, sequence item and scalar.

use std::collections::HashMap;

use super::{Diagnostic, Severity};

/// Line/column of every YAML path, from a marked event parse (serde_yaml keeps none), and
/// where the text of scalar values starts (for errors inside expressions).
#[derive(Debug, Default)]
pub(super) struct Locations {
    paths: HashMap<String, (usize, usize)>,
    text_starts: HashMap<String, TextStart>,
}

/// Where the text of a scalar value starts; `lines` for a literal block (`|`), whose lines
/// each start at the block's column.
#[derive(Debug)]
struct TextStart {
    line: usize,
    column: usize,
    lines: Option<String>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Locator {
    stack: Vec<Frame>,
    out: HashMap<String, (usize, usize)>,
    text_starts: HashMap<String, TextStart>,
}

impl Locator {
    /// Path of a value that starts here; records sequence items.
    fn value_path(&mut self, mark: yaml_rust2::scanner::Marker) -> String {
        match self.stack.last() {
            Some(Frame::Map { path, key: Some(k) }) => join(path, k),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                self.out.insert(p.clone(), (mark.line(), mark.col() + 1));
                p
            }
            _ => String::new(),
        }
    }

    fn after_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl yaml_rust2::parser::MarkedEventReceiver for Locator {
    fn on_event(&mut self, ev: yaml_rust2::Event, mark: yaml_rust2::scanner::Marker) {
        use yaml_rust2::Event;
        match ev {
            Event::MappingStart(..) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.after_value();
            }
            Event::Scalar(s, style, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    let p = join(path, &s);
                    self.out.insert(p, (mark.line(), mark.col() + 1));
                    *key = Some(s);
                } else {
                    let p = self.value_path(mark);
                    // Columns inside the text are exact only for one-line, escape-free scalars.
                    use yaml_rust2::scanner::TScalarStyle as Style;
                    let one_line = !s.contains('\n');
                    let start = match style {
                        Style::Plain if one_line => Some((0, None)),
                        Style::SingleQuoted if one_line && !s.contains('\'') => Some((1, None)),
                        Style::DoubleQuoted if one_line && !s.contains(['"', '\\']) => {
                            Some((1, None))
                        }
                        Style::Literal => Some((0, Some(s))),
                        _ => None,
                    };
                    if let Some((quote, lines)) = start {
                        let (line, column) = (mark.line(), mark.col() + 1 + quote);
                        self.text_starts.insert(
                            p,
                            TextStart {
                                line,
                                column,
                                lines,
                            },
                        );
                    }
                    self.after_value();
                }
            }
            Event::Alias(_) => {
                self.value_path(mark);
                self.after_value();
            }
            _ => {}
        }
    }
}

impl Locations {
    pub(super) fn parse(text: &str) -> Locations {
        let mut locator = Locator::default();
        let mut parser = yaml_rust2::parser::Parser::new(text.chars());
        // A syntax error is reported by serde_yaml with its own location; keep what we got.
        let _ = parser.load(&mut locator, false);
        Locations {
            paths: locator.out,
            text_starts: locator.text_starts,
        }
    }

    /// Location of character `offset` of the one-line string value at `path`.
    pub(super) fn find_in_text(&self, path: &str, offset: usize) -> Option<(usize, usize)> {
        let start = self.text_starts.get(path)?;
        let Some(text) = &start.lines else {
            return Some((start.line, start.column + offset));
        };
        let before: String = text.chars().take(offset).collect();
        let line = start.line + before.matches('\n').count();
        let column = match before.rfind('\n') {
            Some(nl) => start.column + before[nl + 1..].chars().count(),
            None => start.column + before.chars().count(),
        };
        Some((line, column))
    }

    /// A diagnostic at `path` (at character `offset` of its string value when given: an error
    /// inside an expression; at the string itself when its text cannot be mapped to columns).
    pub(super) fn diagnostic(
        &self,
        file: &str,
        severity: Severity,
        path: String,
        offset: Option<usize>,
        message: String,
    ) -> Diagnostic {
        let (loc, message) = match offset {
            Some(o) => match self.find_in_text(&path, o) {
                Some(loc) => (Some(loc), message),
                None => (
                    self.find(&path),
                    format!("at character {}: {message}", o + 1),
                ),
            },
            None => (self.find(&path), message),
        };
        Diagnostic {
            severity,
            file: file.to_string(),
            line: loc.map(|l| l.0),
            column: loc.map(|l| l.1),
            path,
            message,
        }
    }

    /// Location of `path`, else of its closest ancestor.
    pub(super) fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(&loc) = self.paths.get(p) {
                return Some(loc);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The deepest path whose key starts on `line`.
    pub(super) fn path_at_line(&self, line: usize) -> Option<&str> {
        self.paths
            .iter()
            .filter(|(_, &(l, _))| l == line)
            .max_by_key(|(_, &(_, c))| c)
            .map(|(p, _)| p.as_str())
    }
}

/// `path.key`, or `key` at the root.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_of_keys_and_items() {
        let text = "service:\n  pipelines:\n    traces:\n      exporters: [a, b]\n      receivers:\n        - x\n";
        let loc = Locations::parse(text);
        assert_eq!(loc.find("service.pipelines.traces"), Some((3, 5)));
        assert_eq!(
            loc.find("service.pipelines.traces.exporters[1]"),
            Some((4, 22))
        );
        assert_eq!(
            loc.find("service.pipelines.traces.receivers[0]"),
            Some((6, 11))
        );
        assert_eq!(
            loc.find("service.pipelines.traces.receivers[0].deeper"),
            Some((6, 11))
        );
        assert_eq!(
            loc.path_at_line(4),
            Some("service.pipelines.traces.exporters[1]")
        );
    }
}
