//! `BPF_MAP_TYPE_TASK_STORAGE` as a BTF map (aya-ebpf 0.2 has no wrapper for it): a value per
//! task, found from the task itself (no hash, no table to size), created zeroed on demand and
//! freed by the kernel when the task exits. Linux 5.12+ in tracing programs; needs kernel BTF.
use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, BPF_F_NO_PREALLOC},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
};

/// The BTF map definition: the loader reads type, key, value and flags from these fields'
/// types (the libbpf convention); the values are never read.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders for the loader, never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

/// `BPF_LOCAL_STORAGE_GET_F_CREATE`.
const CREATE: u64 = 1;

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        TaskStorage {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    fn lookup(&self, flags: u64) -> Option<*mut T> {
        let map = self as *const Self as *mut core::ffi::c_void;
        // SAFETY: the helper checks the map and the task; NULL means none (or no memory).
        let p = unsafe {
            bpf_task_storage_get(
                map,
                bpf_get_current_task_btf(),
                core::ptr::null_mut(),
                flags,
            )
        } as *mut T;
        (!p.is_null()).then_some(p)
    }

    /// The current task's value, if it has one.
    #[inline(always)]
    pub fn get(&self) -> Option<*mut T> {
        self.lookup(0)
    }

    /// The current task's value, created zeroed when it has none (None: out of memory).
    #[inline(always)]
    pub fn get_or_create(&self) -> Option<*mut T> {
        self.lookup(CREATE)
    }
}
