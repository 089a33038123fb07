//! Kernel-test plumbing: network namespaces joined by a veth pair (removed on drop, also when
//! the test fails), running code inside a namespace, raw AF_PACKET capture and injection, and
//! an oxeye process inside a namespace.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Panics unless running as root (the kernel tests need it; CI runs as root).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kernel tests need root (CI runs them as root)"
    );
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh_out(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A network namespace of the test's own with only its loopback, up; deleted on drop (with
/// whatever runs in it left to the caller to stop first).
pub struct Netns(pub String);

impl Netns {
    /// Creates namespace `oxe<pid><tag>` (a leftover of a crashed run is replaced).
    pub fn new(tag: &str) -> Netns {
        require_root();
        let ns = Netns(format!("oxe{}{tag}", std::process::id() % 10000));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
        sh(&["ip", "netns", "add", &ns.0]);
        sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs `program` in the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Two namespaces `a` and `b` joined by veth `va` (in a) and `vb` (in b), with IPv4 and IPv6
/// addresses, and offloads off (frames on the wire are what the programs see).
pub struct VethPair {
    /// Namespace of the watched side.
    pub ns_a: String,
    /// Namespace of the peer.
    pub ns_b: String,
    /// The watched interface (oxeye attaches here).
    pub va: String,
    /// The peer interface.
    pub vb: String,
    /// IPv4 of a, b.
    pub v4: (String, String),
    /// IPv6 of a, b.
    pub v6: (String, String),
}

impl VethPair {
    /// Creates the pair; `tag` keeps names unique per test.
    pub fn new(tag: &str) -> VethPair {
        require_root();
        let id = std::process::id() % 10000;
        let pair = VethPair {
            ns_a: format!("oxe{id}{tag}a"),
            ns_b: format!("oxe{id}{tag}b"),
            va: format!("oxa{tag}"),
            vb: format!("oxb{tag}"),
            v4: ("10.201.0.1".into(), "10.201.0.2".into()),
            v6: ("fd00:201::1".into(), "fd00:201::2".into()),
        };
        // Leftovers of a crashed earlier run with the same names.
        pair.delete_namespaces();
        sh(&["ip", "netns", "add", &pair.ns_a]);
        sh(&["ip", "netns", "add", &pair.ns_b]);
        sh(&[
            "ip", "link", "add", &pair.va, "netns", &pair.ns_a, "type", "veth", "peer", "name",
            &pair.vb, "netns", &pair.ns_b,
        ]);
        for (ns, dev, v4, v6) in [
            (&pair.ns_a, &pair.va, &pair.v4.0, &pair.v6.0),
            (&pair.ns_b, &pair.vb, &pair.v4.1, &pair.v6.1),
        ] {
            sh(&[
                "ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro",
                "off",
            ]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                dev,
            ]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        pair
    }

    /// Deletes both namespaces (which deletes the veth pair); missing ones are fine.
    fn delete_namespaces(&self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }

    /// Id of the XDP program attached to the interface in namespace A, if one is.
    pub fn xdp_prog_id(&self) -> Option<u32> {
        let links = sh_out(&[
            "ip", "-n", &self.ns_a, "-d", "link", "show", "dev", &self.va,
        ]);
        let words: Vec<&str> = links.split_whitespace().collect();
        words
            .windows(3)
            .find(|w| w[0].starts_with("prog/xdp") && w[1] == "id")
            .and_then(|w| w[2].parse().ok())
    }

    /// True when some interface of namespace `a` still carries an XDP program or a TC filter.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let links = sh_out(&["ip", "-n", &self.ns_a, "-d", "link", "show"]);
        if links.contains("xdp") || links.contains("prog/xdp") {
            found.push(format!("XDP still attached in {}: {links}", self.ns_a));
        }
        let net = sh_out(&["ip", "netns", "exec", &self.ns_a, "bpftool", "net", "show"]);
        if net.contains("oxeye") {
            found.push(format!("bpftool net show in {}: {net}", self.ns_a));
        }
        let tc = sh_out(&[
            "tc", "-n", &self.ns_a, "filter", "show", "dev", &self.va, "egress",
        ]);
        if !tc.trim().is_empty() {
            found.push(format!("tc filter on {}: {tc}", self.va));
        }
        found
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        self.delete_namespaces();
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`; sockets it opens live there.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on a namespace fd we hold; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn if_index(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: reads a NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(idx != 0, "no interface {name} here");
    idx as i32
}

fn packet_socket(ifname: &str) -> (OwnedFd, libc::sockaddr_ll) {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = if_index(ifname);
    (fd, addr)
}

/// A captured frame: `(outgoing, bytes)`.
pub type Frame = (bool, Vec<u8>);

/// Captures every frame on `ifname` (inside `ns`) until stopped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Frame>>>,
}

impl Capture {
    /// Starts capturing; returns once the socket is bound.
    pub fn start(ns: &str, ifname: &str) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let ifname = ifname.to_string();
        let handle = in_ns(ns, move || {
            let (fd, addr) = packet_socket(&ifname);
            // SAFETY: binding with a sockaddr_ll we built.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind AF_PACKET");
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: setsockopt with a timeval of the right size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            ready_tx.send(()).expect("ready");
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: sockaddr_ll is plain data.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: recvfrom into buffers we own, with their sizes.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        libc::MSG_TRUNC,
                        &mut from as *mut _ as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n > 0 {
                    let n = (n as usize).min(buf.len());
                    frames.push((from.sll_pkttype == libc::PACKET_OUTGOING, buf[..n].to_vec()));
                }
            }
            frames
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("capture ready");
        Capture {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns the frames.
    pub fn finish(mut self) -> Vec<Frame> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("capture thread")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends raw Ethernet frames out of `ifname` in `ns` (they arrive at the veth peer).
pub fn inject(ns: &str, ifname: &str, frames: Vec<Vec<u8>>) {
    let ifname = ifname.to_string();
    in_ns(ns, move || {
        let (fd, addr) = packet_socket(&ifname);
        for f in frames {
            // SAFETY: sendto from a buffer we own, to a sockaddr_ll we built.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    f.as_ptr() as *const libc::c_void,
                    f.len(),
                    0,
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                n,
                f.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    })
    .join()
    .expect("inject thread");
}

/// Sends prepared frames out of `ifname` in `ns` for `secs`, in the order `order` gives (indexes
/// into `frames`, cycled), with `sendmmsg` batches of 256 on an AF_PACKET socket that receives
/// nothing; returns the frames sent. Bounded by time; the frames only go to the veth peer.
pub fn blast(
    ns: &str,
    ifname: &str,
    frames: Arc<Vec<Vec<u8>>>,
    order: Arc<Vec<u32>>,
    secs: f64,
) -> u64 {
    let ifname = ifname.to_string();
    in_ns(ns, move || {
        // One CPU, as a NIC's RSS keeps a flow on one queue: the programs run on the sender's
        // CPU (veth's NAPI), so a migrating sender would spread every flow over all CPUs.
        // SAFETY: cpu_set_t is plain data; sched_setaffinity on this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            libc::CPU_SET(cpus - 1, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        // Protocol 0: the socket sends only (ETH_P_ALL would queue every frame back to it).
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; bind(2) with its size.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = if_index(&ifname);
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        const BATCH: usize = 256;
        let mut iov: Vec<libc::iovec> = vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0
            };
            BATCH
        ];
        // SAFETY: mmsghdr is plain data.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        let end = std::time::Instant::now() + Duration::from_secs_f64(secs);
        let (mut sent, mut pos) = (0u64, 0usize);
        while std::time::Instant::now() < end {
            for i in 0..BATCH {
                let f = &frames[order[pos % order.len()] as usize];
                pos += 1;
                iov[i].iov_base = f.as_ptr() as *mut libc::c_void;
                iov[i].iov_len = f.len();
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: BATCH headers, each pointing at one iovec over a frame that outlives the call.
            let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n > 0 {
                sent += n as u64;
                // Frames not taken this time are sent next time, in order.
                pos -= BATCH - n as usize;
            }
        }
        sent
    })
    .join()
    .expect("sender thread")
}

/// Flow identity used by the tests: (src, dst, sport, dport, transport, direction).
pub type Tuple = (String, String, u16, u16, String, String);

/// (src, dst, sport, dport, transport) of a frame.
pub type FiveTuple = (String, String, u16, u16, String);

/// Parses an Ethernet frame (optionally 802.1Q-tagged) into `(src, dst, sport, dport, transport)`
/// and its TCP flags, for the ground-truth side of the tests.
pub fn frame_tuple(f: &[u8]) -> Option<(FiveTuple, u8)> {
    let mut off = 14;
    let mut et = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    while et == 0x8100 || et == 0x88a8 {
        et = u16::from_be_bytes([*f.get(off + 2)?, *f.get(off + 3)?]);
        off += 4;
    }
    let (src, dst, proto, l4) = match et {
        0x0800 => {
            let ihl = (*f.get(off)? & 0x0f) as usize * 4;
            let s: [u8; 4] = f.get(off + 12..off + 16)?.try_into().ok()?;
            let d: [u8; 4] = f.get(off + 16..off + 20)?.try_into().ok()?;
            (
                std::net::Ipv4Addr::from(s).to_string(),
                std::net::Ipv4Addr::from(d).to_string(),
                *f.get(off + 9)?,
                off + ihl,
            )
        }
        0x86dd => {
            let s: [u8; 16] = f.get(off + 8..off + 24)?.try_into().ok()?;
            let d: [u8; 16] = f.get(off + 24..off + 40)?.try_into().ok()?;
            (
                std::net::Ipv6Addr::from(s).to_string(),
                std::net::Ipv6Addr::from(d).to_string(),
                *f.get(off + 6)?,
                off + 40,
            )
        }
        _ => return None,
    };
    let port = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*f.get(l4 + i)?, *f.get(l4 + i + 1)?]))
    };
    let (name, flags) = match proto {
        6 => ("tcp", *f.get(l4 + 13)?),
        17 => ("udp", 0),
        _ => return None,
    };
    Some(((src, dst, port(0)?, port(2)?, name.to_string()), flags))
}

/// An `oxeye run` inside a namespace; killed on drop if still running.
pub struct OxeyeInNs {
    child: Child,
}

impl OxeyeInNs {
    /// Starts `oxeye run -c config` in `ns` and waits until it logs `ready_line`.
    pub fn start(
        ns: &str,
        config: &std::path::Path,
        ready_line: &str,
    ) -> (OxeyeInNs, std::sync::mpsc::Receiver<String>) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(crate::oxeye_bin())
            .args(["run", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start oxeye");
        let (rx, _all) = crate::follow(child.stderr.take().expect("stderr"));
        let mut seen = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.contains(ready_line) {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("oxeye did not log `{ready_line}`:\n{seen}");
                }
            }
        }
        (OxeyeInNs { child }, rx)
    }

    /// oxeye's pid (`ip netns exec` execs it).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGINT, wait, and return (exit code, stdout, rest of stderr).
    pub fn stop(
        mut self,
        stderr: std::sync::mpsc::Receiver<String>,
    ) -> (Option<i32>, String, String) {
        // `ip netns exec` execs oxeye, so the child pid is oxeye's.
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read stdout");
        let status = self.child.wait().expect("wait");
        // The reader thread ends at EOF, after the process exits.
        let err: Vec<String> = stderr.iter().collect();
        (status.code(), out, err.join("\n"))
    }
}

impl OxeyeInNs {
    /// SIGKILL and reap: no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OxeyeInNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
