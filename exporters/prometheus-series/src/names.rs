//! OpenTelemetry → Prometheus names, as the specification's "Prometheus and OpenMetrics
//! Compatibility" says and the Collector's translator does: invalid characters become `_`
//! (runs of them one), a unit becomes a suffix word (`ms` → `milliseconds`, `By/s` →
//! `bytes_per_second`, annotations in braces dropped, `1` → `ratio` on gauges), and counters end
//! in `_total`.

/// How a metric is exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A monotonic sum.
    Counter,
    /// A gauge, or a sum that is not monotonic.
    Gauge,
    /// An explicit-bucket histogram.
    Histogram,
    /// A summary.
    Summary,
}

/// `[a-zA-Z0-9_:]` kept, anything else `_`, runs of `_` one, no leading digit.
fn sanitize(name: &str, colons: bool) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':');
        let c = if ok { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A label name: sanitized, `key_` before a leading digit, `__` reserved for Prometheus.
pub fn label(key: &str) -> String {
    let mut s = sanitize(key, false);
    if s.starts_with("__") || (s.starts_with('_') && key.starts_with(|c: char| c.is_ascii_digit()))
    {
        s = format!("key{s}");
    }
    if s.is_empty() {
        s = "key_".into();
    }
    s
}

/// One unit word (`ms` → `milliseconds`); unknown units pass through.
fn unit_word(unit: &str, per: bool) -> String {
    let w = match unit {
        "d" if per => "day",
        "h" if per => "hour",
        "min" if per => "minute",
        "s" if per => "second",
        "w" if per => "week",
        "mo" if per => "month",
        "y" if per => "year",
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tebibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        other => other,
    };
    w.to_string()
}

/// The unit as a name suffix (`bytes_per_second`), or empty.
fn unit_suffix(unit: &str, shape: Shape) -> String {
    // `{request}` and `ms{go}`: annotations name no unit.
    let mut plain = String::new();
    let mut depth = 0;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let plain = plain.trim();
    if plain.is_empty() {
        return String::new();
    }
    if plain == "1" {
        return if shape == Shape::Gauge {
            "ratio".into()
        } else {
            String::new()
        };
    }
    let word = match plain.split_once('/') {
        Some((a, b)) if !a.is_empty() => {
            format!("{}_per_{}", unit_word(a, false), unit_word(b, true))
        }
        Some((_, b)) => format!("per_{}", unit_word(b, true)),
        None => unit_word(plain, false),
    };
    sanitize(&word, false).trim_matches('_').to_string()
}

/// The Prometheus name of a metric: namespace, sanitized name, unit word and `_total`
/// (`suffixes: false` leaves the last two out, as `add_metric_suffixes: false` does).
pub fn metric(namespace: &str, name: &str, unit: &str, shape: Shape, suffixes: bool) -> String {
    let mut n = sanitize(name, true);
    if !namespace.is_empty() {
        n = format!("{}_{n}", sanitize(namespace, false));
    }
    if suffixes {
        let unit = unit_suffix(unit, shape);
        let tokens: Vec<&str> = n.split('_').collect();
        if !unit.is_empty() && !n.ends_with(&unit) && !tokens.contains(&unit.as_str()) {
            n = format!("{}_{unit}", n.trim_end_matches('_'));
        }
        if shape == Shape::Counter && !n.ends_with("_total") {
            n = format!("{}_total", n.trim_end_matches('_'));
        }
    }
    let n = n.trim_end_matches('_').to_string();
    if n.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{n}")
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_specification() {
        use Shape::*;
        let m = |name, unit, shape| metric("", name, unit, shape, true);
        assert_eq!(
            m("traces.span.metrics.calls", "", Counter),
            "traces_span_metrics_calls_total"
        );
        assert_eq!(
            m("traces.span.metrics.duration", "ms", Histogram),
            "traces_span_metrics_duration_milliseconds"
        );
        assert_eq!(
            m("http.server.request.duration", "s", Histogram),
            "http_server_request_duration_seconds"
        );
        assert_eq!(
            m("http.server.requests", "{request}", Counter),
            "http_server_requests_total"
        );
        assert_eq!(
            m("system.network.io", "By", Counter),
            "system_network_io_bytes_total"
        );
        assert_eq!(
            m("throughput", "By/s", Gauge),
            "throughput_bytes_per_second"
        );
        assert_eq!(m("cpu.utilization", "1", Gauge), "cpu_utilization_ratio");
        assert_eq!(m("cpu.time", "s", Counter), "cpu_time_seconds_total");
        assert_eq!(m("requests_total", "", Counter), "requests_total");
        assert_eq!(m("latency_seconds", "s", Histogram), "latency_seconds");
        assert_eq!(m("9lives..x", "", Gauge), "_9lives_x");
        assert_eq!(metric("oxeye", "a-b", "ms", Gauge, false), "oxeye_a_b");
        assert_eq!(label("http.request.method"), "http_request_method");
        assert_eq!(label("1st"), "key_1st");
        assert_eq!(
            label("__name"),
            "_name",
            "`__` is reserved: one `_` is left"
        );
    }
}
