//! At start: the brokers answer and the topics exist, so a wrong address or a missing topic is
//! an error naming them, not records that never arrive.

use std::time::Duration;

use rdkafka::error::KafkaResult;
use rdkafka::metadata::Metadata;

/// Checks that `brokers` answer within `timeout` and that every topic of `topics` exists;
/// returns each topic's partition count. `metadata` fetches every topic's (a producer's or a
/// consumer's `fetch_metadata(None, timeout)`); blocking, so call this from a blocking thread.
pub fn check(
    metadata: impl FnOnce(Duration) -> KafkaResult<Metadata>,
    brokers: &[String],
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<usize>, String> {
    let metadata = metadata(timeout).map_err(|e| {
        format!(
            "the Kafka brokers {} did not answer within {timeout:?}: {e} (are they up, and is `brokers` right?)",
            brokers.join(", ")
        )
    })?;
    let mut missing = Vec::new();
    let mut partitions = Vec::new();
    for t in topics {
        match metadata.topics().iter().find(|m| m.name() == *t) {
            Some(m) if m.error().is_none() => partitions.push(m.partitions().len()),
            _ => missing.push(*t),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "topic{} `{}` not found on the Kafka brokers {}: create {} (with as many partitions as consumers you will run), or name existing ones in `traces.topic`, `metrics.topic`, `logs.topic`",
            if missing.len() > 1 { "s" } else { "" },
            missing.join("`, `"),
            brokers.join(", "),
            if missing.len() > 1 { "them" } else { "it" },
        ));
    }
    Ok(partitions)
}
