//! What oxeye's two Prometheus exporters share: OpenTelemetry → Prometheus names ([`names`])
//! and the series kept from points ([`store`]) — `prometheus` renders them for a scrape,
//! `prometheusremotewrite` sends the ones each batch updated.

pub mod names;
pub mod store;

/// A label name (or name prefix) a user may give: letters, digits and `_`, not starting with a
/// digit or `__` (reserved for Prometheus).
pub fn valid_label(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}
