//! The walk against glibc's `backtrace()` (libgcc's unwinder) in this very process, from deep
//! in Rust code through the standard library and the test harness to the thread's start.
#![allow(clippy::unwrap_used)]

mod common;

use oxeye_unwind::{walk, End, Objects, Process, Regs};

extern "C" {
    fn backtrace(buffer: *mut *mut libc::c_void, size: libc::c_int) -> libc::c_int;
}

/// Registers here, glibc's return addresses from here, and the model's walk from the same
/// registers (while every frame is still live).
#[inline(never)]
fn compare(process: &Process) -> (Vec<u64>, End, Vec<u64>) {
    let (pc, sp, bp): (u64, u64, u64);
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            bp = out(reg) bp,
        );
    }
    let mut buf = [std::ptr::null_mut(); 128];
    let n = unsafe { backtrace(buf.as_mut_ptr(), 128) };
    let theirs: Vec<u64> = buf[..n as usize].iter().map(|&p| p as u64).collect();
    let pid = std::process::id();
    let (ours, end) = walk(
        |pc| process.rule(pc),
        |a| common::read(pid, a),
        Regs { pc, sp, bp },
        128,
    );
    (ours, end, theirs)
}

#[inline(never)]
fn deeper(n: u32, process: &Process) -> (Vec<u64>, End, Vec<u64>) {
    if n == 0 {
        return compare(process);
    }
    let r = deeper(n - 1, std::hint::black_box(process));
    std::hint::black_box(r)
}

#[test]
fn the_walk_finds_the_frames_libgcc_finds() {
    let mut objects = Objects::default();
    let process = Process::load(std::process::id(), &mut objects).unwrap();
    let (ours, end, theirs) = deeper(6, &process);
    let mut names = common::Names::default();
    let named = names.stack(&process, &ours);
    eprintln!("walk ({end:?}): {}", named.join(" ← "));
    assert_eq!(
        end,
        End::Complete,
        "the walk did not reach the thread's start: {named:?}"
    );
    // glibc's first entry is its return address in `compare`; ours is the pc read there.
    // Above that, frame for frame, the same return addresses.
    assert!(ours.len() > 10, "{named:?}");
    assert_eq!(
        &ours[1..],
        &theirs[1..ours.len().min(theirs.len())],
        "ours {named:?}"
    );
    assert_eq!(ours.len(), theirs.len(), "glibc went further: {theirs:x?}");
    assert!(
        named.iter().filter(|n| n.contains("deeper")).count() >= 6,
        "{named:?}"
    );
}
