//! The settings of a queue on disk as exporters spell them: `storage: {directory, max_size,
//! fsync}` and `when_full`.

use std::time::Duration;

use oxeye_api::ConfigErrors;
use serde::Deserialize;

/// What `export` does when the sending queue is full.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room (back-pressure into the pipeline's own queue).
    #[default]
    Block,
    /// Drop the incoming batch and count it (`reason="sending_queue_full"`).
    DropNewest,
    /// Delete the oldest queued records to make room, and count them
    /// (`reason="sending_queue_full"`). Needs `storage`.
    DropOldest,
}

/// `storage`: the queue kept on disk, so a restart, a crash or an OOM kill loses
/// nothing that was queued.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// A directory of its own; each exporter's queue lives in a subdirectory named after it.
    pub directory: std::path::PathBuf,
    /// Bytes on disk at most (`1GiB`, `512MiB`, or a number of bytes).
    #[serde(default = "default_max_size")]
    pub max_size: bytesize::ByteSize,
    /// `every_batch` (an fdatasync per write: survives a power cut) or an interval such as
    /// `1s` (the default: survives kill -9 and OOM kills; a power cut loses at most that long).
    #[serde(default)]
    pub fsync: Fsync,
}

fn default_max_size() -> bytesize::ByteSize {
    bytesize::ByteSize::gib(1)
}

/// When the persistent queue's writes are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// After every write.
    EveryBatch,
    /// On this interval.
    Interval(Duration),
}

impl Default for Fsync {
    fn default() -> Self {
        Fsync::Interval(Duration::from_secs(1))
    }
}

impl<'de> Deserialize<'de> for Fsync {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected `every_batch` or an interval such as `1s`")
        })?;
        if s.trim() == "every_batch" {
            return Ok(Fsync::EveryBatch);
        }
        oxeye_api::config::parse_duration(&s)
            .map(Fsync::Interval)
            .map_err(|e| {
                serde::de::Error::custom(format!("expected `every_batch` or an interval: {e}"))
            })
    }
}

impl StorageConfig {
    /// Every mistake in these settings, at their keys under `at` (e.g. `sending_queue.storage`).
    pub fn check(&self, at: &str, errors: &mut ConfigErrors) {
        if self.directory.as_os_str().is_empty() {
            errors.push(format!("{at}.directory"), "must not be empty");
        } else if let Err(e) = crate::check_writable(&self.directory) {
            errors.push(format!("{at}.directory"), e.to_string());
        }
        if self.max_size.as_u64() < 1 << 20 {
            errors.push(format!("{at}.max_size"), "must be at least 1MiB");
        }
        if matches!(self.fsync, Fsync::Interval(d) if d.is_zero()) {
            errors.push(
                format!("{at}.fsync"),
                "must be `every_batch` or an interval more than 0",
            );
        }
    }
}
