//! `${env:NAME}` and `${env:NAME:-default}` expansion of the config text, before parsing.

/// An error from `${env:...}` expansion, at a byte offset of the original text.
pub(super) struct ExpandError {
    pub(super) offset: usize,
    pub(super) message: String,
}

/// Byte index where a YAML comment starts on `line` (a `#` at the start or after whitespace,
/// outside quotes), if any.
fn comment_start(line: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return Some(i),
            None => {}
        }
        prev = c;
    }
    None
}

/// Expands `${env:VAR}` and `${env:VAR:-default}` outside comments; `$$` is a literal `$`.
pub(super) fn expand_env(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> (String, Vec<ExpandError>) {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let code_end = comment_start(line).unwrap_or(line.len());
        let (code, comment) = line.split_at(code_end);
        let (expanded, errs) = expand_line(code, lookup);
        out.push_str(&expanded);
        out.push_str(comment);
        errors.extend(errs.into_iter().map(|e| ExpandError {
            offset: offset + e.offset,
            message: e.message,
        }));
        offset += line.len();
    }
    (out, errors)
}

fn expand_line(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> (String, Vec<ExpandError>) {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let consumed = if tail.starts_with("$$") {
            out.push('$');
            2
        } else if let Some(body) = tail.strip_prefix("${") {
            match body.find('}') {
                None => {
                    errors.push(ExpandError {
                        offset: offset + i,
                        message: "unclosed `${`: write ${env:NAME} or $$ for a literal $".into(),
                    });
                    out.push_str(tail);
                    tail.len()
                }
                Some(end) => {
                    let inner = &body[..end];
                    match inner.strip_prefix("env:") {
                        Some(spec) => {
                            let (name, default) = match spec.split_once(":-") {
                                Some((n, d)) => (n, Some(d)),
                                None => (spec, None),
                            };
                            let valid = !name.is_empty()
                                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                            match (valid, lookup(name), default) {
                                (false, _, _) => errors.push(ExpandError {
                                    offset: offset + i,
                                    message: format!("`${{{inner}}}`: `{name}` is not a valid environment variable name"),
                                }),
                                (true, Some(v), _) => out.push_str(&v),
                                (true, None, Some(d)) => out.push_str(d),
                                (true, None, None) => errors.push(ExpandError {
                                    offset: offset + i,
                                    message: format!(
                                        "environment variable `{name}` is not set and has no default: set it, or write ${{env:{name}:-default}}"
                                    ),
                                }),
                            }
                        }
                        None => errors.push(ExpandError {
                            offset: offset + i,
                            message: format!(
                                "unsupported expansion `${{{inner}}}`: only ${{env:NAME}} and ${{env:NAME:-default}} are expanded; write $$ for a literal $"
                            ),
                        }),
                    }
                    2 + end + 1
                }
            }
        } else {
            out.push('$');
            1
        };
        rest = &tail[consumed..];
        offset += i + consumed;
    }
    out.push_str(rest);
    (out, errors)
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/x".into()),
            "RATE" => Some("250".into()),
            _ => None,
        }
    }

    #[test]
    fn env_expansion() {
        let (out, errs) = expand_env(
            "a: ${env:HOME_DIR}/x\nb: ${env:NOPE:-dflt}\nc: $$5 $x",
            &env,
        );
        assert!(errs.is_empty());
        assert_eq!(out, "a: /home/x/x\nb: dflt\nc: $5 $x");
        let (_, errs) = expand_env("a: 1\nb: ${env:NOPE}\nc: ${foo}\nd: ${env:BAD-NAME}", &env);
        let msgs: Vec<_> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errs.len(), 3, "{msgs:?}");
        assert!(msgs[0].contains("`NOPE` is not set"));
        assert!(msgs[1].contains("unsupported expansion `${foo}`"));
        assert!(msgs[2].contains("not a valid environment variable name"));
        assert_eq!(line_col("a: 1\nb: ${env:NOPE}", errs[0].offset), (2, 4));
    }
}
