// This library target lets user-space crates name this package as a build-dependency (cache
// invalidation), and holds helpers the program binaries share.
#![no_std]

/// Helpers the programs share (each binary inlines what it uses).
#[cfg(target_arch = "bpf")]
pub mod helpers {
    use aya_ebpf::helpers::bpf_probe_read_kernel;

    /// The `T` at `base + offset` in kernel memory (`None`: offset unknown — `u32::MAX`, as
    /// user space sets offsets the kernel's BTF lacks — or the read failed).
    #[inline(always)]
    pub fn kernel<T: Copy>(base: u64, offset: u32) -> Option<T> {
        if offset == u32::MAX || base == 0 {
            return None;
        }
        unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
    }
}
