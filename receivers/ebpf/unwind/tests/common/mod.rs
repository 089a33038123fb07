//! What the tests share: reading a process's memory and naming its pcs.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;

use object::{Object, ObjectSymbol};
use oxeye_unwind::Process;

/// 8 bytes of process `pid`'s memory; `None` where it is not mapped (no fault, even for this
/// process).
pub fn read(pid: u32, addr: u64) -> Option<u64> {
    let mut v = [0u8; 8];
    let local = libc::iovec {
        iov_base: v.as_mut_ptr().cast(),
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 8,
    };
    let n = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
    (n == 8).then(|| u64::from_ne_bytes(v))
}

/// Function names of pcs, from each object's symbol tables.
#[derive(Default)]
pub struct Names {
    objects: HashMap<std::path::PathBuf, Vec<(u64, u64, String)>>,
}

impl Names {
    /// Each pc's function, or the pc in hex.
    pub fn stack(&mut self, process: &Process, pcs: &[u64]) -> Vec<String> {
        pcs.iter()
            .map(|&pc| self.name(process, pc).unwrap_or_else(|| format!("{pc:#x}")))
            .collect()
    }

    /// The function holding `pc` (a return address is looked up one byte earlier).
    pub fn name(&mut self, process: &Process, pc: u64) -> Option<String> {
        let m = process.mapped(pc)?;
        let path = m.mapping.path.clone();
        let symbols = self.objects.entry(path.clone()).or_insert_with(|| {
            let data = std::fs::read(&path).unwrap_or_default();
            let Ok(file) = object::File::parse(&*data) else {
                return Vec::new();
            };
            let mut s: Vec<(u64, u64, String)> = file
                .symbols()
                .chain(file.dynamic_symbols())
                .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
                .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
                .collect();
            s.sort();
            s
        });
        let addr = pc.wrapping_sub(m.bias);
        let i = symbols.partition_point(|s| s.0 <= addr);
        let (start, size, name) = symbols.get(i.checked_sub(1)?)?;
        (addr < start + size).then(|| name.clone())
    }
}

/// A traced child, killed on drop.
pub struct Traced(pub std::process::Child);

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn ptrace(req: libc::c_uint, pid: u32, data: *mut libc::c_void) -> i64 {
    unsafe {
        libc::ptrace(
            req,
            pid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            data,
        )
    }
}

/// The registers of `pid` at a moment it is running: interrupt, read, let go.
pub fn stop_and_read(pid: u32) -> Option<libc::user_regs_struct> {
    if ptrace(libc::PTRACE_INTERRUPT, pid, std::ptr::null_mut()) != 0 {
        return None;
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid as i32, &mut status, libc::__WALL) };
    if !libc::WIFSTOPPED(status) {
        return None;
    }
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    let ok = ptrace(
        libc::PTRACE_GETREGS,
        pid,
        (&mut regs as *mut libc::user_regs_struct).cast(),
    ) == 0;
    ptrace(libc::PTRACE_CONT, pid, std::ptr::null_mut());
    ok.then_some(regs)
}

/// Starts tracing `pid` (`PTRACE_SEIZE`: it keeps running) and waits past its dynamic loader.
pub fn seize(pid: u32) {
    assert_eq!(
        unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid as i32, 0, 0) },
        0,
        "PTRACE_SEIZE: {}",
        std::io::Error::last_os_error()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
}
