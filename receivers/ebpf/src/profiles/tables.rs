//! `profiles.unwind: tables`: what the walker of `oxeye_profile_unwind` reads — each sampled
//! process's executable mappings (`UNWIND_PROCS`), each object's stack deltas packed one after
//! another in `UNWIND_DELTAS` (built once per object by [`oxeye_unwind`]), and the distinct
//! rules they index (`UNWIND_RULES`). Runs off the async workers (building a table reads and
//! parses the object). A table is dropped once in the kernel: user space keeps only where each
//! object's deltas are.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use oxeye_ebpf_common::{
    PyProc, UnwindMapping, UnwindProcess, UnwindRule, CFA_DEREF_RBP, CFA_DEREF_RSP, CFA_RBP,
    CFA_RSP, PY_ENTRY_EVERY, PY_ENTRY_IS_ENTRY, PY_ENTRY_OWNER, PY_THREAD_FSBASE, PY_THREAD_TID,
    RBP_AT_CFA, RBP_AT_RBP, RBP_SAME, UNWIND_MAX_MAPPINGS, UNWIND_MAX_RULES, UR_FRAME, UR_INVALID,
    UR_PLT, UR_SIGNAL, UR_STOP,
};
use oxeye_unwind::maps::{self, Mapping};
use oxeye_unwind::python::{self, Entry, Interpreter, NotPython};
use oxeye_unwind::{Cfa, ObjectKey, Rbp, Rule, Table};

use crate::ProbeError;

/// Processes whose mappings the kernel holds at once (the least recently sampled are evicted,
/// and loaded again when sampled again).
pub const MAX_PROCESSES: u32 = 1024;

/// The maps and what has been put in them.
pub struct Tables {
    procs: BpfHashMap<MapData, u32, UnwindProcess>,
    py_procs: BpfHashMap<MapData, u32, PyProc>,
    /// The CPython processes seen, for naming their frames.
    pub python: Arc<Mutex<HashMap<u32, Interpreter>>>,
    deltas: Array<MapData, u64>,
    /// The same map's descriptor, for batch updates (aya 0.14 has none).
    deltas_fd: std::os::fd::OwnedFd,
    rules: Array<MapData, UnwindRule>,
    /// Each object seen: where its deltas are, and its address at each mapped file offset.
    objects: HashMap<ObjectKey, Placed>,
    /// Where each build id's deltas are.
    by_build_id: HashMap<Vec<u8>, (u32, u32)>,
    /// What each `python3.X`/`libpython3.X` object defines (its symbols read once).
    python_objects: HashMap<ObjectKey, Option<python::Symbols>>,
    rule_index: HashMap<UnwindRule, u32>,
    next_delta: u32,
    /// `UNWIND_DELTAS`'s size (`profiles.unwind_max_deltas`).
    max_deltas: u32,
    /// Counters for the final line and `/metrics`.
    pub stats: Stats,
}

/// An object's deltas in `UNWIND_DELTAS` (count 0: none), and the object address each mapped
/// file offset starts at (so a mapping's bias is `start - vaddr`).
struct Placed {
    first: u32,
    count: u32,
    vaddrs: Vec<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub processes: u64,
    pub objects: u64,
    pub deltas: u64,
    /// Objects left without table: no room, addresses above 4 GiB, or no CFI.
    pub objects_without_table: u64,
    /// Times the deltas filled up and were all dropped (each process then loaded again when
    /// next sampled).
    pub flushes: u64,
    /// CPython processes whose frames are read, and those whose are not (a version oxeye has no
    /// layout for, 3.10, or no `_PyEval_EvalFrameDefault` symbol).
    pub python_processes: u64,
    pub python_unsupported: u64,
    /// Processes gone before their mappings were read (their samples keep the frame-pointer
    /// walk they were taken with).
    pub exited: u64,
}

fn encode(rule: Rule) -> UnwindRule {
    let mut r = UnwindRule {
        kind: UR_FRAME,
        ..UnwindRule::default()
    };
    match rule {
        Rule::Frame { cfa, rbp } => {
            (r.cfa, r.cfa_off) = match cfa {
                Cfa::Rsp(n) => (CFA_RSP, n),
                Cfa::Rbp(n) => (CFA_RBP, n),
                Cfa::DerefRsp(n) => (CFA_DEREF_RSP, n),
                Cfa::DerefRbp(n) => (CFA_DEREF_RBP, n),
                _ => return invalid(),
            };
            (r.rbp, r.rbp_off) = match rbp {
                Rbp::Same => (RBP_SAME, 0),
                Rbp::AtCfa(n) => (RBP_AT_CFA, n),
                Rbp::AtRbp(n) => (RBP_AT_RBP, n),
                _ => return invalid(),
            };
        }
        Rule::Plt { threshold } => {
            r.kind = UR_PLT;
            r.threshold = threshold;
        }
        Rule::Signal => r.kind = UR_SIGNAL,
        Rule::Stop => r.kind = UR_STOP,
        _ => return invalid(),
    }
    r
}

fn invalid() -> UnwindRule {
    UnwindRule {
        kind: UR_INVALID,
        ..UnwindRule::default()
    }
}

impl Tables {
    /// Takes the maps of a loaded profile program whose `UNWIND_DELTAS` holds `max_deltas`.
    pub fn new(ebpf: &mut aya::Ebpf, max_deltas: u32) -> Result<Tables, ProbeError> {
        use crate::spans::take_map;
        use std::os::fd::AsFd;
        let deltas = ebpf
            .take_map("UNWIND_DELTAS")
            .ok_or(ProbeError::MissingMap("UNWIND_DELTAS"))?;
        let aya::maps::Map::Array(data) = &deltas else {
            return Err(ProbeError::MissingMap("UNWIND_DELTAS"));
        };
        let deltas_fd =
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| ProbeError::Syscall {
                    what: "dup of UNWIND_DELTAS".into(),
                    io_error: e,
                })?;
        Ok(Tables {
            procs: take_map(ebpf, "UNWIND_PROCS")?,
            py_procs: take_map(ebpf, "PY_PROCS")?,
            python: Arc::default(),
            deltas: Array::try_from(deltas).map_err(|source| ProbeError::Map {
                what: "UNWIND_DELTAS".into(),
                source,
            })?,
            deltas_fd,
            rules: take_map(ebpf, "UNWIND_RULES")?,
            objects: HashMap::new(),
            by_build_id: HashMap::new(),
            python_objects: HashMap::new(),
            rule_index: HashMap::new(),
            next_delta: 0,
            max_deltas,
            stats: Stats::default(),
        })
    }

    /// Reads process `pid`'s mappings, builds and loads the tables it lacks, and hands the
    /// mappings to the walker. A process that exited meanwhile is skipped.
    pub fn load(&mut self, pid: u32) {
        let text = match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            Ok(text) => text,
            Err(e) => {
                // Gone (ESRCH reads as NotFound); another error (hidepid) is not an exit.
                if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
                {
                    self.stats.exited += 1;
                }
                return;
            }
        };
        let mappings = maps::parse(&text);
        self.python(pid, &mappings);
        let flushes = self.stats.flushes;
        let mut mapped: Vec<UnwindMapping> = mappings
            .iter()
            .filter_map(|m| self.mapping(pid, m))
            .collect();
        // The deltas filled up and were flushed meanwhile: the mappings read before point at
        // dropped tables. Once more (a process too large for all of them gets what fits).
        if self.stats.flushes != flushes {
            mapped = mappings
                .iter()
                .filter_map(|m| self.mapping(pid, m))
                .collect();
        }
        // Kernel threads have none: they keep the kernel's walk (no user stack).
        if mapped.is_empty() {
            return;
        }
        mapped.sort_by_key(|m| m.start);
        mapped.truncate(UNWIND_MAX_MAPPINGS);
        let mut value = UnwindProcess {
            n: mapped.len() as u32,
            _pad: 0,
            mappings: [UnwindMapping::default(); UNWIND_MAX_MAPPINGS],
        };
        value.mappings[..mapped.len()].copy_from_slice(&mapped);
        if self.procs.insert(pid, value, 0).is_ok() {
            self.stats.processes += 1;
        }
    }

    /// A CPython process: its frames are read with the native stack (3.11+).
    fn python(&mut self, pid: u32, mappings: &[Mapping]) {
        let interp = match python::find_cached(pid, mappings, &mut self.python_objects) {
            Ok(i) => i,
            Err(NotPython::NoRuntime) => return,
            Err(_) => {
                self.stats.python_unsupported += 1;
                return;
            }
        };
        let l = interp.layout;
        // 3.10's threads are known by fs base: its offset in task_struct comes from BTF.
        let thread = match (l.thread_is_tid, crate::btf::fsbase_offset()) {
            (true, _) => Some((PY_THREAD_TID, 0)),
            (false, Some(off)) => Some((PY_THREAD_FSBASE, off)),
            (false, None) => None,
        };
        let (Some((eval_start, eval_end)), Some((thread_kind, task_fsbase))) =
            (interp.eval, thread)
        else {
            self.stats.python_unsupported += 1;
            return;
        };
        let (entry_kind, entry_offset) = match l.entry {
            Entry::IsEntry(o) => (PY_ENTRY_IS_ENTRY, o),
            Entry::Owner(o) => (PY_ENTRY_OWNER, o),
            _ => (PY_ENTRY_EVERY, 0),
        };
        let off = |v: u64| v as u16;
        let proc = PyProc {
            runtime: interp.runtime,
            eval_start,
            eval_end,
            interpreters_head: off(l.interpreters_head),
            threads_head: off(l.threads_head),
            tstate_next: off(l.tstate_next),
            tstate_thread: off(l.tstate_thread),
            tstate_frame: off(l.tstate_frame),
            cframe_frame: l.cframe_frame.map_or(u16::MAX, off),
            frame_code: off(l.frame_code),
            frame_previous: off(l.frame_previous),
            frame_instr: off(l.frame_instr),
            entry_kind,
            entry_offset: off(entry_offset),
            thread_kind,
            task_fsbase,
            _pad: 0,
        };
        if self.py_procs.insert(pid, proc, 0).is_ok() {
            self.stats.python_processes += 1;
            self.python
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pid, interp);
        }
    }

    /// Objects whose tables are in the kernel now, and their deltas (since the last flush).
    pub fn loaded(&self) -> (u64, u64) {
        let objects = self.objects.values().filter(|p| p.count > 0).count();
        (objects as u64, self.next_delta.into())
    }

    /// One mapping for the walker, its object's table loaded first if it is new.
    fn mapping(&mut self, pid: u32, m: &Mapping) -> Option<UnwindMapping> {
        let (path, key) = oxeye_unwind::object(pid, m).ok()?;
        let known = self.objects.get(&key).and_then(|p| {
            let vaddr = p.vaddrs.iter().find(|v| v.0 == m.offset)?.1;
            Some((p.first, p.count, vaddr))
        });
        let (first, count, vaddr) = match known {
            Some(k) => k,
            None => {
                // Only the headers and the CFI sections are read (`ReadCache`).
                let f = std::fs::File::open(&path).ok()?;
                let cache = object::ReadCache::new(&f);
                let file = object::File::parse(&cache).ok()?;
                let vaddr = m.start.wrapping_sub(maps::bias(&file, m)?);
                let (first, count) = match self.objects.get_mut(&key) {
                    Some(p) => {
                        p.vaddrs.push((m.offset, vaddr));
                        (p.first, p.count)
                    }
                    None => {
                        use object::Object;
                        // The same binary at another path (a container's copy): its table.
                        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
                        let shared = build_id.as_ref().and_then(|b| self.by_build_id.get(b));
                        let (first, count) = match shared {
                            Some(&placed) => placed,
                            None => {
                                let t0 = std::time::Instant::now();
                                let placed = match Table::from_object(&file) {
                                    Ok(table) => self.place(&table),
                                    Err(_) => {
                                        self.stats.objects_without_table += 1;
                                        (0, 0)
                                    }
                                };
                                tracing::debug!(object = %m.path.display(), deltas = placed.1, took = ?t0.elapsed(), "profiles: unwind table loaded");
                                if let Some(b) = build_id {
                                    self.by_build_id.insert(b, placed);
                                }
                                placed
                            }
                        };
                        let vaddrs = vec![(m.offset, vaddr)];
                        self.objects.insert(
                            key,
                            Placed {
                                first,
                                count,
                                vaddrs,
                            },
                        );
                        (first, count)
                    }
                };
                (first, count, vaddr)
            }
        };
        Some(UnwindMapping {
            start: m.start,
            end: m.end,
            bias: m.start.wrapping_sub(vaddr),
            first,
            count,
        })
    }

    /// Loads a table into `UNWIND_DELTAS`: `(first, count)`, count 0 when it does not fit.
    /// When the deltas are full, all are dropped first (bounded memory: the processes sampled
    /// from then on load theirs again).
    fn place(&mut self, table: &Table) -> (u32, u32) {
        let deltas = table.deltas();
        let max = self.max_deltas;
        let room = |next: u32| (next as u64 + deltas.len() as u64) <= max as u64;
        if !room(self.next_delta) && room(0) {
            self.flush();
        }
        let fits = room(self.next_delta);
        let small = deltas.last().is_none_or(|d| d.addr <= u32::MAX as u64);
        if deltas.is_empty() || !fits || !small {
            self.stats.objects_without_table += 1;
            return (0, 0);
        }
        let first = self.next_delta;
        let mut values = Vec::with_capacity(deltas.len());
        for d in deltas {
            let Some(rule) = self.rule(d.rule) else {
                self.stats.objects_without_table += 1;
                return (0, 0);
            };
            values.push((d.addr << 32) | rule as u64);
        }
        // One syscall for the table; one per delta where the kernel has no batch updates.
        let written = crate::sys::update_batch(self.deltas_fd.as_fd(), first, &values).is_ok()
            || values
                .iter()
                .enumerate()
                .all(|(i, &v)| self.deltas.set(first + i as u32, v, 0).is_ok());
        if !written {
            self.stats.objects_without_table += 1;
            return (0, 0);
        }
        self.next_delta += deltas.len() as u32;
        self.stats.objects += 1;
        self.stats.deltas += deltas.len() as u64;
        (first, deltas.len() as u32)
    }

    /// Drops every table: the walker forgets every process (each is loaded again when next
    /// sampled, see `ProfileProbe`), and the deltas are written from the start.
    fn flush(&mut self) {
        let pids: Vec<u32> = self.procs.keys().filter_map(Result::ok).collect();
        for pid in pids {
            let _ = self.procs.remove(&pid);
        }
        self.objects.clear();
        self.by_build_id.clear();
        self.next_delta = 0;
        self.stats.flushes += 1;
        tracing::info!(
            deltas = self.max_deltas,
            flushes = self.stats.flushes,
            "profiles: the unwind tables are full: all dropped, each process is loaded again when next sampled"
        );
    }

    /// The rule's index in `UNWIND_RULES`, adding it the first time; `None` when full.
    fn rule(&mut self, rule: Rule) -> Option<u32> {
        let r = encode(rule);
        if let Some(&i) = self.rule_index.get(&r) {
            return Some(i);
        }
        let i = self.rule_index.len() as u32;
        if i >= UNWIND_MAX_RULES || self.rules.set(i, r, 0).is_err() {
            return None;
        }
        self.rule_index.insert(r, i);
        Some(i)
    }
}
