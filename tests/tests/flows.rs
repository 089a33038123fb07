//! Kernel tests (root): real packets through a veth pair between two namespaces the test makes
//! and removes; oxeye's XDP (ingress) and TC (egress) programs count them; the counts must be
//! exact. TCP counts are checked against an AF_PACKET capture of the same interface.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use oxeye_tests::netns::{frame_tuple, in_ns, inject, Capture, OxeyeInNs, Tuple, VethPair};
use oxeye_tests::temp_config;

const READY: &str = "TC flow program attached";

fn config(pair: &VethPair, name: &str) -> std::path::PathBuf {
    temp_config(
        name,
        &format!(
            "receivers:\n  ebpf:\n    flows: {{interfaces: [{}], flush_interval: 200ms}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    flows: {{receivers: [ebpf], exporters: [stdout]}}\n",
            pair.va
        ),
    )
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Counts {
    packets: u64,
    bytes: u64,
    flags: u8,
}

/// The tuple and direction of a JSON line, a flow record's or a `flowmetrics` point's.
fn tuple(v: &serde_json::Value) -> Tuple {
    let text = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k}")).to_string();
    let port = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}")) as u16;
    (
        text("source.address"),
        text("destination.address"),
        port("source.port"),
        port("destination.port"),
        text("network.transport"),
        text("network.io.direction"),
    )
}

/// Sums oxeye's JSON flow records (several windows) per tuple and direction.
fn oxeye_flows(stdout: &str) -> HashMap<Tuple, Counts> {
    let mut m: HashMap<Tuple, Counts> = HashMap::new();
    for line in stdout.lines().filter(|l| !l.starts_with(METRIC_LINE)) {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let t = tuple(&v);
        let flags = v["oxeye.tcp_flags"]
            .as_array()
            .expect("flags")
            .iter()
            .map(|f| match f.as_str() {
                Some("FIN") => 0x01,
                Some("SYN") => 0x02,
                Some("RST") => 0x04,
                Some("PSH") => 0x08,
                Some("ACK") => 0x10,
                _ => 0,
            })
            .fold(0u8, |a, b| a | b);
        let c = m.entry(t).or_default();
        c.packets += v["packets"].as_u64().expect("packets");
        c.bytes += v["bytes"].as_u64().expect("bytes");
        c.flags |= flags;
    }
    m
}

/// How the stdout exporter's JSON lines of metrics start.
const METRIC_LINE: &str = "{\"signal\":\"metrics\"";

/// Flows to stdout as JSON and through `flowmetrics` (delta, every tuple dimension) to stdout too.
fn config_with_flowmetrics(pair: &VethPair, name: &str) -> std::path::PathBuf {
    temp_config(
        name,
        &format!(
            "receivers:
  ebpf:
    flows: {{interfaces: [{}], flush_interval: 200ms}}
exporters:
  stdout: {{format: json}}
connectors:
  flowmetrics:
    aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA
    metrics_flush_interval: 300ms
    dimensions: [source.address, destination.address, source.port, destination.port, network.transport, network.io.direction]
service:
  telemetry: {{logs: {{summary_interval: 0s}}}}
  pipelines:
    flows: {{receivers: [ebpf], exporters: [stdout, flowmetrics]}}
    metrics: {{receivers: [flowmetrics], exporters: [stdout]}}
",
            pair.va
        ),
    )
}

/// Sums the `flowmetrics` points (delta) in oxeye's JSON lines per tuple and direction.
fn flow_metrics(stdout: &str) -> HashMap<Tuple, Counts> {
    let mut m: HashMap<Tuple, Counts> = HashMap::new();
    for line in stdout.lines().filter(|l| l.starts_with(METRIC_LINE)) {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let t = tuple(&v);
        let value = v["value"].as_u64().expect("an integer");
        let c = m.entry(t).or_default();
        match v["name"].as_str() {
            Some("network.flow.io") => c.bytes += value,
            Some("network.flow.packets") => c.packets += value,
            other => panic!("unexpected metric {other:?}"),
        }
    }
    m
}

fn stop_and_check(
    pair: &VethPair,
    ox: OxeyeInNs,
    err: std::sync::mpsc::Receiver<String>,
) -> (String, String) {
    let (code, out, stderr) = ox.stop(err);
    assert_eq!(code, Some(0), "oxeye exit: {stderr}");
    assert!(stderr.contains("flow programs detached"), "{stderr}");
    let left = pair.leftovers();
    assert!(
        left.is_empty(),
        "programs left attached after oxeye exited: {left:?}"
    );
    (out, stderr)
}

/// A UDP server in `ns` counting datagrams until 1.5 s pass without one.
fn udp_sink(ns: &str, server: SocketAddr) -> std::thread::JoinHandle<usize> {
    in_ns(ns, move || {
        let s = UdpSocket::bind(server).expect("bind server");
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while s.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    })
}

fn udp_exact(tag: &str, v6: bool) {
    udp_exact_with(tag, v6, false);
}

/// `metrics`: through `flowmetrics` too, whose sums must equal the flows' per tuple.
fn udp_exact_with(tag: &str, v6: bool, metrics: bool) {
    let pair = VethPair::new(tag);
    let (a, b) = if v6 { pair.v6.clone() } else { pair.v4.clone() };
    let cfg = if metrics {
        config_with_flowmetrics(&pair, tag)
    } else {
        config(&pair, tag)
    };
    let (ox, err) = OxeyeInNs::start(&pair.ns_a, &cfg, READY);
    let server: SocketAddr = SocketAddr::new(a.parse().expect("ip"), 9999);
    let client: SocketAddr = SocketAddr::new(b.parse().expect("ip"), 40000);
    let sink = udp_sink(&pair.ns_a, server);
    std::thread::sleep(Duration::from_millis(100));
    const N: usize = 50;
    let sizes: Vec<usize> = (0..N).map(|i| 64 + i * 13).collect();
    let to_send = sizes.clone();
    in_ns(&pair.ns_b, move || {
        let s = UdpSocket::bind(client).expect("bind client");
        for size in to_send {
            s.send_to(&vec![0xab; size], server).expect("send");
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .join()
    .expect("sender");
    assert_eq!(sink.join().expect("sink"), N, "every datagram arrived");
    std::thread::sleep(Duration::from_millis(300));
    let (out, _) = stop_and_check(&pair, ox, err);
    let flows = oxeye_flows(&out);
    // Kernel timestamps (jiffies) come out as Unix ns within the test's run.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    for line in out
        .lines()
        .filter(|l| l.contains("\"destination.port\":9999") && !l.starts_with(METRIC_LINE))
    {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
        let (first, last) = (
            v["first_seen_unix_nano"].as_u64().expect("first"),
            v["last_seen_unix_nano"].as_u64().expect("last"),
        );
        assert!(first <= last, "{line}");
        assert!(
            now - first < 30_000_000_000 && last < now + 1_000_000_000,
            "timestamps off: {line}"
        );
    }
    let l3 = if v6 { 40 } else { 20 };
    let expected_bytes: u64 = sizes.iter().map(|s| (14 + l3 + 8 + s) as u64).sum();
    let key: Tuple = (
        b.clone(),
        a.clone(),
        40000,
        9999,
        "udp".into(),
        "receive".into(),
    );
    let got = flows
        .get(&key)
        .copied()
        .unwrap_or_else(|| panic!("no flow {key:?} in {flows:#?}"));
    assert_eq!(
        (got.packets, got.bytes),
        (N as u64, expected_bytes),
        "{key:?}"
    );
    let back: Tuple = (a, b, 9999, 40000, "udp".into(), "transmit".into());
    assert!(!flows.contains_key(&back), "no datagram went back");
    if metrics {
        // Every tuple's byte and packet sums, exactly the flow records' (and so the traffic's).
        assert_eq!(flow_metrics(&out), flows);
    }
}

fn tcp_exact(tag: &str, v6: bool) {
    let pair = VethPair::new(tag);
    let (a, b) = if v6 { pair.v6.clone() } else { pair.v4.clone() };
    let (ox, err) = OxeyeInNs::start(&pair.ns_a, &config(&pair, tag), READY);
    let capture = Capture::start(&pair.ns_a, &pair.va);
    let server: SocketAddr = SocketAddr::new(a.parse().expect("ip"), 8080);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = in_ns(&pair.ns_a, move || {
        let l = TcpListener::bind(server).expect("listen");
        ready_tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("accept");
        let mut req = vec![0u8; 1000];
        s.read_exact(&mut req).expect("read request");
        s.write_all(&[7u8; 1200]).expect("write response");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("read to EOF");
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    let local = in_ns(&pair.ns_b, move || {
        let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
        c.write_all(&[1u8; 1000]).expect("write request");
        let mut resp = vec![0u8; 1200];
        c.read_exact(&mut resp).expect("read response");
        let local = c.local_addr().expect("local addr");
        c.shutdown(std::net::Shutdown::Both).expect("shutdown");
        local
    })
    .join()
    .expect("client");
    srv.join().expect("server");
    std::thread::sleep(Duration::from_millis(400));
    let frames = capture.finish();
    let (out, _) = stop_and_check(&pair, ox, err);
    let flows = oxeye_flows(&out);

    let mut truth: HashMap<Tuple, Counts> = HashMap::new();
    for (outgoing, f) in &frames {
        let Some(((src, dst, sp, dp, proto), flags)) = frame_tuple(f) else {
            continue;
        };
        if proto != "tcp" || !(sp == local.port() || dp == local.port()) {
            continue;
        }
        let dir = if *outgoing { "transmit" } else { "receive" };
        let c = truth
            .entry((src, dst, sp, dp, proto, dir.into()))
            .or_default();
        c.packets += 1;
        c.bytes += f.len() as u64;
        c.flags |= flags;
    }
    let inbound: Tuple = (
        b.clone(),
        a.clone(),
        local.port(),
        8080,
        "tcp".into(),
        "receive".into(),
    );
    let outbound: Tuple = (a, b, 8080, local.port(), "tcp".into(), "transmit".into());
    for key in [inbound, outbound] {
        let expected = truth
            .get(&key)
            .copied()
            .unwrap_or_else(|| panic!("capture saw no {key:?}: {truth:#?}"));
        let got = flows
            .get(&key)
            .copied()
            .unwrap_or_else(|| panic!("oxeye saw no {key:?}: {flows:#?}"));
        assert_eq!(got, expected, "{key:?}: oxeye vs capture");
        assert!(
            got.flags & 0x02 != 0 && got.flags & 0x01 != 0,
            "SYN and FIN seen on {key:?}: {:#x}",
            got.flags
        );
    }
}

#[test]
fn udp_ipv4_exact_counts() {
    udp_exact("u4", false);
}

#[test]
fn flowmetrics_sums_are_the_exact_traffic() {
    udp_exact_with("fm", false, true);
}

#[test]
fn udp_ipv6_exact_counts() {
    udp_exact("u6", true);
}

/// A run with nothing to show says what it watches: the interfaces at start, a line when a
/// harvest finds no packets, and the packets seen per interface at the end — equal to the
/// packets in the records written.
#[test]
fn a_quiet_run_says_what_it_watches() {
    let pair = VethPair::new("qt");
    let (ox, err) = OxeyeInNs::start(
        &pair.ns_a,
        &config(&pair, "qt"),
        &format!("watching {}: a record per flow every 200ms", pair.va),
    );
    let quiet = format!("no packets on {} in the last 200ms", pair.va);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains(&quiet) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match err.recv_timeout(left) {
            Ok(line) => seen.push_str(&(line + "\n")),
            Err(_) => panic!("no `{quiet}` line in 10 s:\n{seen}"),
        }
    }
    let (a, b) = pair.v4.clone();
    let server = SocketAddr::new(a.parse().expect("ip"), 9999);
    let sink = udp_sink(&pair.ns_a, server);
    std::thread::sleep(Duration::from_millis(100));
    in_ns(&pair.ns_b, move || {
        let s = UdpSocket::bind((b.as_str(), 40000)).expect("bind client");
        for _ in 0..5 {
            s.send_to(b"hello", server).expect("send");
        }
    })
    .join()
    .expect("sender");
    assert_eq!(sink.join().expect("sink"), 5);
    let (out, stderr) = stop_and_check(&pair, ox, err);
    let written: u64 = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            v["packets"].as_u64().expect("packets")
        })
        .sum();
    assert!(written >= 5, "{out}");
    assert!(
        stderr.contains(&format!("packets seen: {} {written};", pair.va)),
        "{written} packets written:\n{stderr}"
    );
}

/// 20 000 flows × 3 rounds through the kernel's front cache across 200 ms generations, on
/// whichever CPU the sender ran; every count must still be exact. (Few of them find their set
/// full: ~2 000 sequential ports a generation spread evenly over 8 192 sets.)
#[test]
fn many_flows_exact_counts_through_cache_collisions() {
    let pair = VethPair::new("mc");
    let (a, b) = pair.v4.clone();
    let (ox, err) = OxeyeInNs::start(&pair.ns_a, &config(&pair, "mc"), READY);
    const FLOWS: u16 = 20_000;
    // Below the ephemeral range (32 768–60 999), where the warm-up socket's port comes from.
    const BASE: u16 = 2_000;
    const ROUNDS: u64 = 3;
    const SIZE: usize = 32;
    let (src, dst) = (b.clone(), a.clone());
    in_ns(&pair.ns_b, move || {
        let server = SocketAddr::new(dst.parse().expect("ip"), 9998);
        // Resolve the neighbour first, so no datagram waits (or is dropped) in its queue.
        let warm = UdpSocket::bind((src.as_str(), 0)).expect("bind");
        warm.send_to(&[0; SIZE], server).expect("send");
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..ROUNDS {
            for i in 0..FLOWS {
                let s = UdpSocket::bind((src.as_str(), BASE + i)).expect("bind client");
                s.send_to(&[0xcd; SIZE], server).expect("send");
                if i % 20 == 19 {
                    // Paced: the veth ring must not overflow before XDP sees the frames.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    })
    .join()
    .expect("sender");
    std::thread::sleep(Duration::from_millis(400));
    let (out, _) = stop_and_check(&pair, ox, err);
    let flows = oxeye_flows(&out);
    let mut wrong = Vec::new();
    for i in 0..FLOWS {
        let key: Tuple = (
            b.clone(),
            a.clone(),
            BASE + i,
            9998,
            "udp".into(),
            "receive".into(),
        );
        let got = flows.get(&key).copied().unwrap_or_default();
        if (got.packets, got.bytes) != (ROUNDS, ROUNDS * (14 + 20 + 8 + SIZE) as u64) {
            wrong.push((BASE + i, got));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {FLOWS} flows miscounted, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn tcp_ipv4_matches_capture() {
    tcp_exact("t4", false);
}

#[test]
fn tcp_ipv6_matches_capture() {
    tcp_exact("t6", true);
}

fn eth(ether_type: u16) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 1]);
    f.extend(ether_type.to_be_bytes());
    f
}

fn ipv4(ihl_words: u8, proto: u8, frag: u16, total_header: usize) -> Vec<u8> {
    let mut h = vec![0u8; total_header];
    h[0] = 0x40 | ihl_words;
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[10, 9, 9, 1]);
    h[16..20].copy_from_slice(&[10, 9, 9, 2]);
    h
}

fn ipv6(next: u8) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[6] = next;
    h[7] = 64;
    h[8] = 0xfd;
    h[23] = 1;
    h[24] = 0xfd;
    h[39] = 2;
    h
}

#[test]
fn malformed_frames_are_counted_not_fatal() {
    let pair = VethPair::new("mf");
    let (ox, err) = OxeyeInNs::start(&pair.ns_a, &config(&pair, "mf"), READY);
    let cat = |parts: &[Vec<u8>]| parts.concat();
    let malformed = vec![
        eth(0x8100),                                                   // VLAN tag missing
        cat(&[eth(0x0800), vec![0x45; 10]]),                           // IPv4 header truncated
        cat(&[eth(0x0800), ipv4(4, 17, 0, 20), vec![0; 8]]),           // IHL < 5
        cat(&[eth(0x0800), ipv4(15, 17, 0, 20)]),                      // options past the end
        cat(&[eth(0x0800), ipv4(5, 6, 0, 20), vec![0; 8]]),            // TCP header truncated
        cat(&[eth(0x0800), ipv4(5, 17, 0, 20), vec![0; 4]]),           // UDP header truncated
        cat(&[eth(0x86dd), vec![0x60; 20]]),                           // IPv6 header truncated
        cat(&[eth(0x86dd), ipv6(0), vec![17, 200, 0, 0, 0, 0, 0, 0]]), // hop-by-hop runs past the end
        cat(&[
            eth(0x86dd),
            ipv6(60),
            [60u8, 0, 0, 0, 0, 0, 0, 0].repeat(9),
            vec![0; 8],
        ]), // chain too long
    ];
    let n_bad = malformed.len() as u64;
    // Well-formed but unusual: a later IPv4 fragment carries no ports.
    let fragment = cat(&[eth(0x0800), ipv4(5, 17, 100, 20), vec![0; 32]]);
    let mut frames = malformed;
    frames.push(fragment);
    inject(&pair.ns_b, &pair.vb, frames);
    std::thread::sleep(Duration::from_millis(400));
    let (out, stderr) = stop_and_check(&pair, ox, err);
    assert!(
        stderr.contains(&format!("xdp.malformed_packets={n_bad} ")),
        "expected {n_bad} malformed packets counted:\n{stderr}"
    );
    let flows = oxeye_flows(&out);
    let frag: Tuple = (
        "10.9.9.1".into(),
        "10.9.9.2".into(),
        0,
        0,
        "udp".into(),
        "receive".into(),
    );
    assert_eq!(flows.get(&frag).map(|c| c.packets), Some(1), "{flows:#?}");
}

/// A frame with `tags` (TPIDs, outermost first; VLAN ids 100, 101, ...), an IP header and a
/// TCP or UDP header, padded with `payload` bytes.
fn tagged(
    tags: &[u16],
    v6: bool,
    proto: u8,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: usize,
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (i, tpid) in tags.iter().enumerate() {
        f.extend(tpid.to_be_bytes());
        f.extend((100 + i as u16).to_be_bytes());
    }
    let l4_len = if proto == 6 { 20 } else { 8 };
    if v6 {
        f.extend(0x86ddu16.to_be_bytes());
        let mut h = ipv6(proto);
        h[4..6].copy_from_slice(&((l4_len + payload) as u16).to_be_bytes());
        f.extend(h);
    } else {
        f.extend(0x0800u16.to_be_bytes());
        let mut h = ipv4(5, proto, 0, 20);
        h[2..4].copy_from_slice(&((20 + l4_len + payload) as u16).to_be_bytes());
        f.extend(h);
    }
    let mut l4 = vec![0u8; l4_len];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4[12] = 5 << 4;
        l4[13] = flags;
    }
    f.extend(l4);
    f.extend(vec![0u8; payload]);
    f
}

/// 802.1Q and 802.1ad (QinQ) tags, IPv4 and IPv6, UDP and a TCP exchange in both directions:
/// ingress frames arrive from the peer (XDP), egress frames leave the watched side (TC).
/// The namespaces have no VLAN devices (no 8021q module here), so the frames are built by hand.
#[test]
fn vlan_tagged_frames_exact_counts() {
    let pair = VethPair::new("vl");
    let (ox, err) = OxeyeInNs::start(&pair.ns_a, &config(&pair, "vl"), READY);
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const PSH: u8 = 0x08;
    const FIN: u8 = 0x01;
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    let mut expected: HashMap<Tuple, Counts> = HashMap::new();
    let (a4, b4, a6, b6) = ("10.9.9.1", "10.9.9.2", "fd00::1", "fd00::2");
    for (tags, v6) in [
        (vec![0x8100u16], false),
        (vec![0x8100], true),
        (vec![0x88a8, 0x8100], false),
        (vec![0x88a8, 0x8100], true),
    ] {
        let (src, dst) = if v6 { (a6, b6) } else { (a4, b4) };
        let port = 1000 + tags.len() as u16 * 10 + v6 as u16;
        // UDP, peer -> watched side, 5 datagrams.
        for i in 0..5 {
            let f = tagged(&tags, v6, 17, port, 53, 0, 10 * i);
            let c = expected
                .entry((
                    src.into(),
                    dst.into(),
                    port,
                    53,
                    "udp".into(),
                    "receive".into(),
                ))
                .or_default();
            c.packets += 1;
            c.bytes += f.len() as u64;
            ingress.push(f);
        }
        // TCP: client (port) -> server 80 arrives; server -> client leaves.
        for (flags, payload, inbound) in [
            (SYN, 0, true),
            (SYN | ACK, 0, false),
            (ACK, 0, true),
            (PSH | ACK, 100, true),
            (PSH | ACK, 300, false),
            (FIN | ACK, 0, true),
            (FIN | ACK, 0, false),
            (ACK, 0, true),
        ] {
            let (f, key) = if inbound {
                (
                    tagged(&tags, v6, 6, port, 80, flags, payload),
                    (
                        src.to_string(),
                        dst.to_string(),
                        port,
                        80,
                        "tcp".to_string(),
                        "receive".to_string(),
                    ),
                )
            } else {
                (
                    tagged(&tags, v6, 6, 80, port, flags, payload),
                    (
                        src.to_string(),
                        dst.to_string(),
                        80,
                        port,
                        "tcp".to_string(),
                        "transmit".to_string(),
                    ),
                )
            };
            let c = expected.entry(key).or_default();
            c.packets += 1;
            c.bytes += f.len() as u64;
            c.flags |= flags;
            if inbound {
                ingress.push(f);
            } else {
                egress.push(f);
            }
        }
    }
    inject(&pair.ns_b, &pair.vb, ingress);
    inject(&pair.ns_a, &pair.va, egress);
    std::thread::sleep(Duration::from_millis(400));
    let (out, stderr) = stop_and_check(&pair, ox, err);
    assert!(stderr.contains("xdp.malformed_packets=0 "), "{stderr}");
    let flows = oxeye_flows(&out);
    for (key, want) in &expected {
        let got = flows
            .get(key)
            .copied()
            .unwrap_or_else(|| panic!("no flow {key:?}: {flows:#?}"));
        assert_eq!(&got, want, "{key:?}");
    }
}

fn oxeye_output_in_ns(
    ns: &str,
    config: &std::path::Path,
    timeout: Duration,
) -> (Option<i32>, String) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(oxeye_tests::oxeye_bin())
        .args(["run", "-c"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start oxeye");
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() >= deadline {
            // Leave nothing running (it holds programs and the namespace) before failing.
            let _ = child.kill();
            let _ = child.wait();
            panic!("oxeye did not exit on its own");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn clear_startup_errors() {
    let pair = VethPair::new("er");
    // An interface that does not exist.
    let cfg = temp_config(
        "er-missing",
        "receivers:\n  ebpf: {flows: {interfaces: [nosuch0]}}\nexporters:\n  nop:\nservice:\n  pipelines:\n    flows: {receivers: [ebpf], exporters: [nop]}\n",
    );
    // A config this host cannot run: exit 2, at the line and path of the name.
    let (code, stderr) = oxeye_output_in_ns(&pair.ns_a, &cfg, Duration::from_secs(20));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            ":2:31: error: receivers.ebpf.flows.interfaces[0]: interface `nosuch0` does not exist (interfaces here: lo, oxaer)"
        ),
        "{stderr}"
    );

    // XDP already attached by someone else (here: another oxeye): not replaced.
    let (first, first_err) = OxeyeInNs::start(&pair.ns_a, &config(&pair, "er-first"), READY);
    let (code, stderr) = oxeye_output_in_ns(
        &pair.ns_a,
        &config(&pair, "er-second"),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("interface `oxaer` already has an XDP program attached by another tool"),
        "{stderr}"
    );
    // The same failure with span sources running beside the flows: the failing half fails the
    // whole receiver at once (it used to keep running, healthy, until a signal).
    let both = temp_config(
        "er-both",
        &format!(
            "receivers:\n  ebpf:\n    flows: {{interfaces: [{}]}}\n    spans: {{sources: [{{syscall: getppid}}]}}\nexporters:\n  nop:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    flows: {{receivers: [ebpf], exporters: [nop]}}\n    traces: {{receivers: [ebpf], exporters: [nop]}}\n",
            pair.va
        ),
    );
    let started = std::time::Instant::now();
    let (code, stderr) = oxeye_output_in_ns(&pair.ns_a, &both, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("interface `oxaer` already has an XDP program")
            && stderr.contains("component=receivers/ebpf"),
        "{stderr}"
    );
    assert!(!stderr.contains("all receivers finished"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let (code, _, _) = first.stop(first_err);
    assert_eq!(code, Some(0), "the first instance is unaffected");
    assert!(pair.leftovers().is_empty(), "{:?}", pair.leftovers());

    // Without privileges: names the capabilities and the fix.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns_a,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(oxeye_tests::oxeye_bin())
        .args(["run", "-c"])
        .arg(config(&pair, "er-unprivileged"))
        .output()
        .expect("run unprivileged");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("setcap cap_bpf,cap_net_admin,cap_perfmon+ep"),
        "{stderr}"
    );
}

#[test]
fn sampling_scales_counts_and_self_metrics_expose_kernel_counters() {
    let pair = VethPair::new("sm");
    let port = oxeye_tests::free_port();
    let cfg = temp_config(
        "sm",
        &format!(
            "receivers:\n  ebpf:\n    flows: {{interfaces: [{}], flush_interval: 200ms, sample_every: 4}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  telemetry: {{metrics: {{address: '127.0.0.1:{port}'}}, logs: {{summary_interval: 0s}}}}\n  pipelines:\n    flows: {{receivers: [ebpf], exporters: [stdout]}}\n",
            pair.va
        ),
    );
    let (ox, err) = OxeyeInNs::start(&pair.ns_a, &cfg, READY);
    let (a, b) = pair.v4.clone();
    let server: SocketAddr = SocketAddr::new(a.parse().expect("ip"), 9999);
    let client: SocketAddr = SocketAddr::new(b.parse().expect("ip"), 40001);
    const N: u64 = 400;
    in_ns(&pair.ns_b, move || {
        let s = UdpSocket::bind(client).expect("bind");
        for _ in 0..N {
            s.send_to(&[0u8; 100], server).expect("send");
        }
    })
    .join()
    .expect("sender");
    std::thread::sleep(Duration::from_millis(500));
    let metrics = in_ns(&pair.ns_a, move || {
        oxeye_tests::http_get(port, "/metrics").expect("GET /metrics")
    })
    .join()
    .expect("metrics");
    let (out, _) = stop_and_check(&pair, ox, err);
    let flows = oxeye_flows(&out);
    let key: Tuple = (b, a, 40001, 9999, "udp".into(), "receive".into());
    let got = flows.get(&key).copied().expect("sampled flow present");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(2);
    assert_eq!(got.packets % 4, 0, "scaled by the sampling rate");
    assert!(
        got.packets.abs_diff(N) <= 4 * cpus,
        "{} packets estimated for {N}",
        got.packets
    );
    assert_eq!(got.bytes, got.packets * (14 + 20 + 8 + 100));
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    assert!(value("oxeye_ebpf_packets_total{kind=\"receiver\",id=\"ebpf\",source=\"xdp\"}") >= N);
    assert!(
        value("oxeye_ebpf_sampled_out_packets_total{kind=\"receiver\",id=\"ebpf\",source=\"xdp\"}")
            > 0
    );
    assert_eq!(
        value("oxeye_ebpf_malformed_packets_total{kind=\"receiver\",id=\"ebpf\",source=\"xdp\"}"),
        0
    );
    // One flow: it holds its cache slot, nothing goes to the hash map.
    assert_eq!(
        value("oxeye_ebpf_flow_cache_misses_total{kind=\"receiver\",id=\"ebpf\",source=\"xdp\"}"),
        0
    );
    assert_eq!(
        value("oxeye_ebpf_flows_evicted_total{kind=\"receiver\",id=\"ebpf\",source=\"flows\"}"),
        0
    );
}

/// Killed without a chance to clean up (SIGKILL, like a crash): the kernel removes the links.
#[test]
fn nothing_left_attached_after_a_crash() {
    let pair = VethPair::new("kl");
    let (ox, err) = OxeyeInNs::start(&pair.ns_a, &config(&pair, "kl"), READY);
    let links = std::process::Command::new("ip")
        .args(["-n", &pair.ns_a, "link", "show", &pair.va])
        .output()
        .expect("ip");
    assert!(
        String::from_utf8_lossy(&links.stdout).contains("xdp"),
        "attached while running"
    );
    ox.kill();
    drop(err);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !pair.leftovers().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left attached after SIGKILL: {:?}",
            pair.leftovers()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn five_reloads_keep_the_xdp_program_and_every_packet() {
    let pair = VethPair::new("reload");
    let (a, b) = (pair.v4.0.clone(), pair.v4.1.clone());
    let yaml = |window: &str, second: bool| {
        format!(
            "receivers:\n  ebpf:\n    flows: {{interfaces: [{}], flush_interval: 200ms}}\nprocessors:\n  aggregation: {{window: {window}}}\nexporters:\n  stdout: {{format: json}}\n  nop:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    flows: {{receivers: [ebpf], processors: [aggregation], exporters: [stdout{}]}}\n",
            pair.va,
            if second { ", nop" } else { "" }
        )
    };
    let path = temp_config("flows-reload", &yaml("1s", false));
    let (ox, err) = OxeyeInNs::start(&pair.ns_a, &path, READY);
    let prog = pair.xdp_prog_id().expect("XDP attached");
    let server: SocketAddr = SocketAddr::new(a.parse().expect("ip"), 9998);
    let client: SocketAddr = SocketAddr::new(b.parse().expect("ip"), 40001);
    let sink = udp_sink(&pair.ns_a, server);
    std::thread::sleep(Duration::from_millis(100));
    // 300 datagrams over ~3 s while the config is reloaded five times: the aggregation window
    // changes each time and an exporter comes and goes.
    const N: usize = 300;
    let sender = in_ns(&pair.ns_b, move || {
        let s = UdpSocket::bind(client).expect("bind client");
        for i in 0..N {
            s.send_to(&vec![0x5a; 100 + i % 50], server).expect("send");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    for i in 1..=5 {
        std::thread::sleep(Duration::from_millis(450));
        let window = if i % 2 == 1 { "2s" } else { "1s" };
        std::fs::write(&path, yaml(window, i % 2 == 1)).expect("rewrite config");
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(ox.pid(), libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            pair.xdp_prog_id(),
            Some(prog),
            "XDP program replaced by reload {i}"
        );
    }
    sender.join().expect("sender");
    assert_eq!(sink.join().expect("sink"), N, "every datagram arrived");
    std::thread::sleep(Duration::from_millis(300));
    let (out, stderr) = stop_and_check(&pair, ox, err);
    assert_eq!(
        stderr.matches("config reloaded in").count(),
        5,
        "five reloads applied: {stderr}"
    );
    assert!(
        stderr.contains("~processors/aggregation[flows]"),
        "{stderr}"
    );
    let flows = oxeye_flows(&out);
    let key: Tuple = (b, a, 40001, 9998, "udp".into(), "receive".into());
    let got = flows
        .get(&key)
        .copied()
        .unwrap_or_else(|| panic!("no flow {key:?} in {flows:#?}"));
    let bytes: u64 = (0..N).map(|i| (14 + 20 + 8 + 100 + i % 50) as u64).sum();
    assert_eq!(
        (got.packets, got.bytes),
        (N as u64, bytes),
        "exact across reloads"
    );
}

#[test]
fn interfaces_added_and_removed_live() {
    let pair = VethPair::new("ifaces");
    let yaml = |ifaces: &str| {
        format!(
            "receivers:\n  ebpf:\n    flows: {{interfaces: [{ifaces}], flush_interval: 200ms}}\nexporters:\n  stdout: {{format: json}}\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    flows: {{receivers: [ebpf], exporters: [stdout]}}\n"
        )
    };
    let path = temp_config("flows-ifaces", &yaml(&pair.va));
    let (ox, err) = OxeyeInNs::start(&pair.ns_a, &path, READY);
    let prog = pair.xdp_prog_id().expect("XDP attached");
    let lo_xdp = || {
        let out = std::process::Command::new("ip")
            .args(["-n", &pair.ns_a, "-d", "link", "show", "dev", "lo"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };
    assert!(!lo_xdp());
    let reload = |ifaces: &str, want_lo: bool| {
        std::fs::write(&path, yaml(ifaces)).expect("rewrite");
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(ox.pid(), libc::SIGHUP) };
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while lo_xdp() != want_lo {
            assert!(
                std::time::Instant::now() < until,
                "lo XDP should be {want_lo}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            pair.xdp_prog_id(),
            Some(prog),
            "the other interface untouched"
        );
    };
    reload(&format!("{}, lo", pair.va), true);
    reload(&pair.va, false);
    let (_, stderr) = stop_and_check(&pair, ox, err);
    assert_eq!(
        stderr.matches("~receivers/ebpf (live)").count(),
        2,
        "both applied live: {stderr}"
    );
    assert!(
        stderr.contains("flow programs detached from the interface"),
        "{stderr}"
    );
    assert!(!lo_xdp(), "nothing left on lo");
}
