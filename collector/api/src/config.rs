//! Helpers for component configs: validation errors and duration parsing.

use std::fmt;
use std::time::Duration;

/// One problem in a component's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path inside the component's config, dotted (`spans.rate`, `rules[2].name`); empty for the
    /// config as a whole. The engine prefixes the component's own path and finds line and column.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
    /// 0-based character offset inside the string value at `path`, for errors in text the
    /// component parses itself (an expression): the engine adds it to the value's column.
    pub offset: Option<usize>,
}

/// All problems found in one component's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl ConfigErrors {
    /// No errors yet.
    pub fn new() -> Self {
        ConfigErrors::default()
    }

    /// Adds an error at `path` (relative to the component's config).
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
            offset: None,
        });
    }

    /// Adds an error at character `offset` of the string value at `path` (a syntax error in an
    /// expression): the engine reports the column of that character.
    pub fn push_at(&mut self, path: impl Into<String>, offset: usize, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
            offset: Some(offset),
        });
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when empty, else `Err(self)`: ends a `validate` function.
    pub fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if e.path.is_empty() {
                write!(f, "{}", e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Why a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// A number without a unit (`10`).
    #[error("`{0}` has no unit: write e.g. `10s`, `250ms`, `1m`")]
    NoUnit(String),
    /// Not a number followed by a unit.
    #[error("`{0}` is not a duration: write e.g. `10s`, `250ms`, `1m`")]
    NotANumber(String),
    /// A unit other than ns, us, ms, s, m and h.
    #[error("unknown unit `{unit}` in `{text}`: use ns, us, ms, s, m or h")]
    UnknownUnit {
        /// The unit written.
        unit: String,
        /// The whole duration written.
        text: String,
    },
    /// Longer than 10^12 seconds, or not finite.
    #[error("`{0}` is out of range")]
    OutOfRange(String),
}

/// Parses durations written like `10s`, `250ms`, `1.5s`, `2m`, `1h`, `500us`, `100ns`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| DurationError::NoUnit(text.to_string()))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(text.to_string()))?;
    let secs = match unit.trim() {
        "ns" => value / 1e9,
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(DurationError::UnknownUnit {
                unit: other.to_string(),
                text: text.to_string(),
            })
        }
    };
    if !secs.is_finite() || secs > 1e12 {
        return Err(DurationError::OutOfRange(text.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `#[serde(with = "oxeye_api::config::duration")]` for a `Duration` field written as `10s`.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Deserializes `10s`-style strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration such as `10s` or `250ms`")
        })?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// Serializes as seconds with a unit (`1.5s`).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs_f64()))
    }
}

/// `#[serde(default, with = "oxeye_api::config::opt_duration")]` for an `Option<Duration>`
/// written as `10ms` (absent: `None`).
pub mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserializes `10ms`-style strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration such as `10us` or `250ms`")
        })?;
        super::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("100ns"), Ok(Duration::from_nanos(100)));
        assert!(parse_duration("10")
            .unwrap_err()
            .to_string()
            .contains("no unit"));
        assert!(parse_duration("10 parsecs")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_duration("x1s").is_err());
    }
}
