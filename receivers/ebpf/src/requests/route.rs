//! `http.route` from configured patterns: `/users/{id}` matches `/users/42` segment by
//! segment (`{name}` is any one segment), a final `*` matches the rest. The first pattern that
//! matches names the route; a path no pattern matches has no route (never the raw path, which
//! would make span names and metric series unbounded).

/// The patterns, in order.
#[derive(Clone, Debug, Default)]
pub struct Routes(Vec<(String, Vec<Segment>)>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Rest,
}

impl Routes {
    /// Compiles the patterns; an error names the first malformed one.
    pub fn new(patterns: &[String]) -> Result<Routes, String> {
        let mut routes = Vec::new();
        for p in patterns {
            let Some(rest) = p.strip_prefix('/') else {
                return Err(format!("route `{p}` does not start with `/`"));
            };
            let parts: Vec<&str> = if rest.is_empty() {
                Vec::new()
            } else {
                rest.split('/').collect()
            };
            let mut segments = Vec::new();
            for (i, s) in parts.iter().enumerate() {
                let seg = if *s == "*" {
                    if i + 1 != parts.len() {
                        return Err(format!("route `{p}`: `*` must be the last segment"));
                    }
                    Segment::Rest
                } else if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                    Segment::Any
                } else if s.contains(['{', '}', '*']) {
                    return Err(format!(
                        "route `{p}`: `{s}` mixes a parameter with text; write a whole segment as `{{name}}`"
                    ));
                } else {
                    Segment::Literal(s.to_string())
                };
                segments.push(seg);
            }
            routes.push((p.clone(), segments));
        }
        Ok(Routes(routes))
    }

    /// The first pattern matching `path`.
    pub fn matching(&self, path: &str) -> Option<String> {
        let rest = path.strip_prefix('/')?;
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        self.0
            .iter()
            .find(|(_, segs)| matches(segs, &parts))
            .map(|(p, _)| p.clone())
    }
}

fn matches(segs: &[Segment], parts: &[&str]) -> bool {
    for (i, seg) in segs.iter().enumerate() {
        match seg {
            Segment::Rest => return true,
            Segment::Any if i < parts.len() && !parts[i].is_empty() => {}
            Segment::Literal(l) if parts.get(i) == Some(&l.as_str()) => {}
            _ => return false,
        }
    }
    segs.len() == parts.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_pattern_names_the_route() {
        let r = Routes::new(&[
            "/".into(),
            "/users/{id}".into(),
            "/users/{id}/orders/{order}".into(),
            "/static/*".into(),
        ])
        .unwrap();
        assert_eq!(r.matching("/").as_deref(), Some("/"));
        assert_eq!(r.matching("/users/42").as_deref(), Some("/users/{id}"));
        assert_eq!(
            r.matching("/users/42/orders/7").as_deref(),
            Some("/users/{id}/orders/{order}")
        );
        assert_eq!(r.matching("/static/a/b.css").as_deref(), Some("/static/*"));
        assert_eq!(r.matching("/users/"), None);
        assert_eq!(r.matching("/other"), None);
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["users", "/a/*/b", "/user{id}"] {
            assert!(Routes::new(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
