//! The config checks `oxeye validate` runs without touching the host (what the host must have
//! is `preflight`'s).

use std::time::Duration;

use oxeye_api::ConfigErrors;

use crate::config::*;

/// Checks values serde cannot: ranges, combinations, the shape of each source.
pub(crate) fn check(c: &EbpfConfig) -> Result<(), ConfigErrors> {
    let mut e = ConfigErrors::new();
    if c.flows.is_none()
        && c.spans.is_none()
        && c.profiles.is_none()
        && c.process.is_none()
        && c.requests.is_none()
    {
        e.push(
            "",
            "configure `flows:`, `spans:`, `requests:`, `profiles:` and/or `process:`, or nothing is collected",
        );
        return Err(e);
    }
    if let Some(p) = &c.process {
        if p.ring_size < 4096 || !p.ring_size.is_power_of_two() {
            e.push(
                "process.ring_size",
                format!(
                    "must be a power of two of at least 4096 bytes, got {}",
                    p.ring_size
                ),
            );
        }
    }
    if let Some(s) = &c.spans {
        validate_spans(s, &mut e);
    }
    if let Some(p) = &c.profiles {
        validate_profiles(p, &mut e);
    }
    if let Some(r) = &c.requests {
        validate_requests(r, &mut e);
    }
    let Some(f) = &c.flows else {
        return e.into_result();
    };
    if f.flush_interval.is_zero() {
        e.push("flows.flush_interval", "must be greater than 0");
    }
    if f.max_flows == 0 {
        e.push("flows.max_flows", "must be at least 1");
    }
    if f.sample_every == 0 {
        e.push(
            "flows.sample_every",
            "must be at least 1 (1 = count every packet)",
        );
    }
    if let Interfaces::List(names) = &f.interfaces {
        if names.is_empty() {
            e.push(
                "flows.interfaces",
                "empty list: name interfaces, or write `default` or `all`",
            );
        }
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
                e.push(
                    format!("flows.interfaces[{i}]"),
                    format!("`{n}` is not a valid interface name"),
                );
            }
        }
    }
    e.into_result()
}

fn validate_requests(r: &RequestsConfig, e: &mut ConfigErrors) {
    use oxeye_ebpf_common::{L7_DATA_MAX, L7_MAX_PORTS};
    if r.protocols.is_empty() {
        e.push(
            "requests.protocols",
            "empty: name at least one (http, dns, redis)",
        );
    }
    if r.ports.len() > L7_MAX_PORTS {
        e.push(
            "requests.ports",
            format!("{} ports: at most {L7_MAX_PORTS}", r.ports.len()),
        );
    }
    if let Some(i) = r.ports.iter().position(|&p| p == 0) {
        e.push(
            format!("requests.ports[{i}]"),
            "port 0 matches no connection",
        );
    }
    if !(16..=L7_DATA_MAX as u32).contains(&r.capture_bytes) {
        e.push(
            "requests.capture_bytes",
            format!(
                "{} is out of range: 16 to {L7_DATA_MAX} (a request's head should fit; 512 is usual)",
                r.capture_bytes
            ),
        );
    }
    if r.max_connections == 0 {
        e.push("requests.max_connections", "must be at least 1");
    }
    if r.ring_size < 4096 || !r.ring_size.is_power_of_two() {
        e.push(
            "requests.ring_size",
            format!(
                "must be a power of two of at least 4096 bytes, got {}",
                r.ring_size
            ),
        );
    }
    if r.metrics.interval.is_zero() {
        e.push("requests.metrics.interval", "must be greater than 0");
    }
    if r.metrics.max_series == 0 {
        e.push("requests.metrics.max_series", "must be at least 1");
    }
    if r.drain_interval.is_zero() {
        e.push("requests.drain_interval", "must be greater than 0");
    }
    if let Some(c) = &r.comm {
        if c.is_empty() || c.len() > 15 {
            e.push(
                "requests.comm",
                format!("`{c}`: a comm is 1 to 15 bytes (the kernel cuts names there)"),
            );
        }
    }
    if let Err(why) = crate::requests::Routes::new(&r.routes) {
        e.push("requests.routes", why);
    }
}

fn validate_profiles(p: &ProfilesConfig, e: &mut ConfigErrors) {
    if p.frequency == 0 || p.frequency > MAX_PROFILE_FREQUENCY {
        e.push(
            "profiles.frequency",
            format!(
                "{} Hz is out of range: give 1 to {MAX_PROFILE_FREQUENCY} samples per second per CPU \
                 (19 or 99 are usual: off the beat of periodic timers)",
                p.frequency
            ),
        );
    }
    if p.window < Duration::from_millis(100) {
        e.push("profiles.window", "must be at least 100ms (10s is usual)");
    }
    if p.stacks == StackMode::None {
        e.push(
            "profiles.stacks",
            "a profile is made of stacks: give `both`, `kernel` or `user`",
        );
    }
    if p.max_depth == 0 || p.max_depth > oxeye_ebpf_common::PROFILE_STACK_DEPTH as u32 {
        e.push(
            "profiles.max_depth",
            format!(
                "must be 1 to {} frames",
                oxeye_ebpf_common::PROFILE_STACK_DEPTH
            ),
        );
    }
    if p.max_stacks == 0 {
        e.push("profiles.max_stacks", "must be at least 1");
    }
    if p.ring_size < 65536 || !p.ring_size.is_power_of_two() {
        e.push(
            "profiles.ring_size",
            format!(
                "must be a power of two of at least 65536 bytes (a sample takes about 2 KiB), got {}",
                p.ring_size
            ),
        );
    }
    if !(4096..=1 << 24).contains(&p.unwind_max_deltas) {
        e.push(
            "profiles.unwind_max_deltas",
            format!(
                "must be 4096 to 16777216 deltas (8 bytes of kernel memory each), got {}",
                p.unwind_max_deltas
            ),
        );
    }
    if p.comm
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 15)
    {
        e.push(
            "profiles.comm",
            "must be 1 to 15 bytes (the kernel keeps 15)",
        );
    }
}

fn validate_spans(s: &SpansConfig, e: &mut ConfigErrors) {
    if s.sources.is_empty() {
        e.push(
            "spans.sources",
            "no sources: add e.g. `- syscall: openat` or `- uprobe: /usr/bin/app:handle`",
        );
    }
    if s.sources.len() > oxeye_ebpf_common::MAX_SOURCES as usize {
        e.push(
            "spans.sources",
            format!("at most {} sources", oxeye_ebpf_common::MAX_SOURCES),
        );
    }
    if s.ring_size < 4096 || !s.ring_size.is_power_of_two() {
        e.push(
            "spans.ring_size",
            format!(
                "must be a power of two of at least 4096 bytes, got {}",
                s.ring_size
            ),
        );
    }
    if s.drain_interval.is_zero() {
        e.push("spans.drain_interval", "must be greater than 0");
    }
    // The raw_syscalls pair looks sources up by syscall number: one source per syscall.
    let mut raw: std::collections::HashMap<&str, usize> = Default::default();
    for (i, src) in s.sources.iter().enumerate() {
        let p = format!("spans.sources[{i}]");
        let kinds = [&src.syscall, &src.uprobe, &src.kprobe]
            .iter()
            .filter(|k| k.is_some())
            .count();
        if kinds != 1 {
            e.push(&p, "give exactly one of `syscall:`, `uprobe:` or `kprobe:`");
            continue;
        }
        if let Some(u) = &src.uprobe {
            if !matches!(u.rsplit_once(':'), Some((path, sym)) if !path.is_empty() && !sym.is_empty())
            {
                e.push(
                    format!("{p}.uprobe"),
                    format!("`{u}`: expected <path>:<symbol>, e.g. /usr/bin/app:handle_request"),
                );
            }
        }
        match src.attach {
            AttachMode::Auto => {}
            AttachMode::Kprobe | AttachMode::Fentry if src.kprobe.is_none() => e.push(
                format!("{p}.attach"),
                "kprobe and fentry apply to `kprobe:` sources (syscall: tracepoint or raw_tracepoint)",
            ),
            AttachMode::Tracepoint | AttachMode::RawTracepoint if src.syscall.is_none() => e.push(
                format!("{p}.attach"),
                "tracepoint and raw_tracepoint apply to `syscall:` sources (kprobe: kprobe or fentry)",
            ),
            AttachMode::RawTracepoint => {
                let name = src.syscall.as_deref().unwrap_or_default();
                if let Some(first) = raw.insert(name, i) {
                    raw.insert(name, first);
                    e.push(
                        format!("{p}.attach"),
                        format!("spans.sources[{first}] already traces `{name}` through raw_syscalls, which takes one source per syscall: leave `attach` out here to use the syscall's tracepoint pair"),
                    );
                }
            }
            _ => {}
        }
        if src.args as usize > oxeye_ebpf_common::MAX_ARGS {
            e.push(
                format!("{p}.args"),
                format!("at most {} arguments", oxeye_ebpf_common::MAX_ARGS),
            );
        }
        if src
            .comm
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 15)
        {
            e.push(
                format!("{p}.comm"),
                "must be 1 to 15 bytes (the kernel keeps 15)",
            );
        }
        if src.ttl.is_some_and(|t| t.is_zero()) {
            e.push(
                format!("{p}.ttl"),
                "must be greater than 0 (leave it out to keep the source)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::EbpfFactory;
    use oxeye_api::testing::check;

    #[test]
    fn request_config_validation() {
        assert!(check::<EbpfFactory>("requests: {}").is_ok());
        assert!(check::<EbpfFactory>(
            "requests: {protocols: [http], ports: [80, 8080], comm: nginx, routes: ['/users/{id}', '/static/*']}"
        )
        .is_ok());
        let e = check::<EbpfFactory>("requests: {protocols: [http, smtp]}").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown variant `smtp`, expected one of `http`, `redis`, `dns`"),
            "{e}"
        );
        let e = check::<EbpfFactory>(
            "requests: {protocols: [], ports: [0], capture_bytes: 4, max_connections: 0, ring_size: 1000, drain_interval: 0s, comm: a-name-longer-than-15, routes: [users]}",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "requests.protocols",
                "requests.ports[0]",
                "requests.capture_bytes",
                "requests.max_connections",
                "requests.ring_size",
                "requests.drain_interval",
                "requests.comm",
                "requests.routes"
            ]
        );
    }

    #[test]
    fn config_validation() {
        assert!(check::<EbpfFactory>("flows: {interfaces: [eth0], sample_every: 4}").is_ok());
        assert!(check::<EbpfFactory>("flows: {interfaces: all}").is_ok());
        assert!(check::<EbpfFactory>("flows: {}").is_ok());
        let e = check::<EbpfFactory>("flows: {interfaces: eth0}").unwrap_err();
        assert!(
            e.to_string()
                .contains("expected `all`, `default`, or a list such as [eth0]"),
            "{e}"
        );
        let e = check::<EbpfFactory>(
            "flows: {interfaces: [], flush_interval: 0s, sample_every: 0, max_flows: 0}",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "flows.flush_interval",
                "flows.max_flows",
                "flows.sample_every",
                "flows.interfaces"
            ]
        );
        assert!(check::<EbpfFactory>("flows: {mode: turbo}").is_err());
        assert!(check::<EbpfFactory>("{}").is_err());
    }

    #[test]
    fn profile_config_validation() {
        assert!(check::<EbpfFactory>("profiles: {}").is_ok());
        assert!(check::<EbpfFactory>(
            "profiles: {frequency: 99, window: 1s, stacks: user, comm: app, max_depth: 64}"
        )
        .is_ok());
        let e = check::<EbpfFactory>(
            "profiles: {frequency: 0, window: 10ms, stacks: none, max_depth: 200, max_stacks: 0, ring_size: 4096, unwind_max_deltas: 100, comm: ''}",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "profiles.frequency",
                "profiles.window",
                "profiles.stacks",
                "profiles.max_depth",
                "profiles.max_stacks",
                "profiles.ring_size",
                "profiles.unwind_max_deltas",
                "profiles.comm"
            ]
        );
        assert!(
            e.to_string()
                .contains("0 Hz is out of range: give 1 to 10000"),
            "{e}"
        );
        assert!(check::<EbpfFactory>("profiles: {frequency: 20000}").is_err());
        assert!(check::<EbpfFactory>("profiles: {hz: 19}").is_err());
    }

    #[test]
    fn span_config_validation() {
        assert!(check::<EbpfFactory>("spans: {sources: [{syscall: openat, pid: 1, min_duration: 10us, stack: both, args: 3}]}").is_ok());
        assert!(check::<EbpfFactory>(
            "spans: {sources: [{uprobe: '/bin/app:main'}, {kprobe: vfs_read, attach: fentry}]}"
        )
        .is_ok());
        let e = check::<EbpfFactory>(
            "spans: {ring_size: 1000, sources: [{syscall: read, uprobe: '/x:y'}, {uprobe: nocolon}, {syscall: read, attach: kprobe, args: 9, comm: ''}]}",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spans.ring_size",
                "spans.sources[0]",
                "spans.sources[1].uprobe",
                "spans.sources[2].attach",
                "spans.sources[2].args",
                "spans.sources[2].comm"
            ]
        );
        assert!(check::<EbpfFactory>(
            "spans: {sources: [{syscall: read, attach: raw_tracepoint}, {syscall: write, attach: tracepoint}]}"
        )
        .is_ok());
        let wrong_kind: Vec<(String, String)> = check::<EbpfFactory>(
            "spans: {sources: [{uprobe: '/bin/app:main', attach: raw_tracepoint}, {kprobe: vfs_read, attach: tracepoint}, {syscall: read, attach: fentry}]}",
        )
        .unwrap_err()
        .0
        .into_iter()
        .map(|f| (f.path, f.message))
        .collect();
        for (i, applies_to) in ["syscall:", "syscall:", "kprobe:"].iter().enumerate() {
            let (path, message) = &wrong_kind[i];
            assert_eq!(path, &format!("spans.sources[{i}].attach"));
            assert!(
                message.contains(&format!("apply to `{applies_to}` sources")),
                "{message}"
            );
        }
        assert_eq!(wrong_kind.len(), 3, "{wrong_kind:?}");
        let twice = check::<EbpfFactory>(
            "spans: {sources: [{syscall: read, attach: raw_tracepoint}, {syscall: read, comm: x, attach: raw_tracepoint}, {syscall: read}]}",
        )
        .unwrap_err();
        assert_eq!(twice.0.len(), 1, "{twice}");
        assert_eq!(twice.0[0].path, "spans.sources[1].attach");
        assert!(
            twice.0[0]
                .message
                .starts_with("spans.sources[0] already traces `read`"),
            "{twice}"
        );
        assert!(check::<EbpfFactory>("spans: {sources: []}").is_err());
        assert!(
            check::<EbpfFactory>("spans: {sources: [{syscall: read, min_duration: 10}]}").is_err()
        );
        assert!(check::<EbpfFactory>("spans: {sources: [{syscall: read, stack: deep}]}").is_err());
    }
}
