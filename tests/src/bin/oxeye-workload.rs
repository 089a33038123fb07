//! A workload for the span tests: prints its pid, waits for a line on stdin, does the work,
//! prints `done`, and exits when stdin closes.
//!
//!     oxeye-workload openat N       N openat calls on a missing file
//!     oxeye-workload nested N       N calls of oxeye_outer (20 ms) -> oxeye_inner (10 ms)
//!     oxeye-workload getppid N      N getppid calls (benchmark)
//!     oxeye-workload getppid@R N    N getppid calls paced at R calls/s (benchmark)
//!     oxeye-workload getuid N       N getuid calls (benchmark: a syscall no source traces)
//!     oxeye-workload loop MS        oxeye_inner(MS) over and over until stdin closes (live probes)
//!     oxeye-workload udp@ADDR N     N 32-byte UDP datagrams to ADDR (ip:port), 2 ms apart (flows)

use std::io::BufRead;
use std::time::Duration;

/// Probed by the uprobe test: must keep its symbol and not be inlined.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn oxeye_inner(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    std::hint::black_box(ms + 1)
}

/// Calls `oxeye_inner` after sleeping: the outer span contains the inner one.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn oxeye_outer(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    std::hint::black_box(oxeye_inner(ms / 2)) + 1
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (what, n) = match args.as_slice() {
        [_, what, n] => (what.clone(), n.parse::<u64>().expect("count")),
        _ => {
            eprintln!(
                "usage: oxeye-workload openat|nested|getppid|getppid@R|getuid|loop|udp@ADDR N"
            );
            std::process::exit(2);
        }
    };
    println!("{}", std::process::id());
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let started = std::time::Instant::now();
    match what.as_str() {
        "openat" => {
            for _ in 0..n {
                let _ = std::fs::File::open("/nonexistent/oxeye-workload");
            }
        }
        "nested" => {
            for _ in 0..n {
                std::hint::black_box(oxeye_outer(std::hint::black_box(20)));
            }
        }
        "getppid" => {
            for _ in 0..n {
                // SAFETY: getppid has no preconditions.
                std::hint::black_box(unsafe { libc::getppid() });
            }
        }
        "write" => {
            // One byte to /dev/null: a write on an fd no request source tracks.
            let null = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .expect("/dev/null");
            let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
            for _ in 0..n {
                // SAFETY: a valid fd and a one-byte buffer we own.
                std::hint::black_box(unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) });
            }
        }
        "getuid" => {
            for _ in 0..n {
                // SAFETY: getuid has no preconditions.
                std::hint::black_box(unsafe { libc::getuid() });
            }
        }
        paced if paced.starts_with("getppid@") => {
            let rate: f64 = paced["getppid@".len()..].parse().expect("rate");
            for i in 0..n {
                // SAFETY: getppid has no preconditions.
                std::hint::black_box(unsafe { libc::getppid() });
                if i % 1000 == 999 {
                    let due = Duration::from_secs_f64((i + 1) as f64 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        "loop" => {
            // Until stdin closes: the test adds and removes probes meanwhile.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut rest = String::new();
                let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::black_box(oxeye_inner(std::hint::black_box(n)));
            }
            return;
        }
        udp if udp.starts_with("udp@") => {
            let to: std::net::SocketAddr = udp["udp@".len()..].parse().expect("ip:port");
            let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let s = std::net::UdpSocket::bind(bind).expect("bind");
            for _ in 0..n {
                s.send_to(&[0xab; 32], to).expect("send");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        other => panic!("unknown workload {other}"),
    }
    // `done <ns>`: the wall time of the work, for benchmarks.
    println!("done {}", started.elapsed().as_nanos());
    // Stay alive (e.g. for symbolization of our stacks) until stdin closes.
    line.clear();
    let _ = std::io::stdin().lock().read_line(&mut line);
}
