//! `symbolization` processor (traces, profiles): raw stack addresses on spans and profile samples
//! become frames (function, module, offset; file and line when debug info exists), with blazesym.
//!
//! - Kernel addresses resolve through `/proc/kallsyms`, read once into a compact table
//!   ([`kallsyms`]).
//! - User addresses resolve through the process's mappings — for a profile sample, the ones the
//!   receiver snapshotted while the process ran (so a process that exited before its window
//!   closed still resolves); otherwise `/proc/<pid>/maps`, read once per process and cached — and
//!   the ELF/DWARF of the mapped file; Rust and C++ names are demangled.
//! - Caches are bounded LRUs with hit/miss self-metrics: processes, files (interned paths) and
//!   frames. A process that already exited yields module + offset frames when its maps were
//!   seen, bare addresses otherwise: never an error, never a stall.
//! - Output: `Span::frames`/`Sample::frames` (kernel frames, then user frames, innermost first),
//!   and on spans the OTel attribute `code.stacktrace` (one frame per line) for OTLP. `max_depth`
//!   applies to spans; a profile sample keeps every frame (the receiver's `max_depth` bounds it),
//!   since a flame graph needs the outermost frames too.
//! - blazesym's symbolizer is not `Send` and reads files: it lives on its own thread, so the
//!   async runtime never blocks on symbolization.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
pub mod kallsyms;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use lru::LruCache;
use oxeye_api::profile::{KERNEL_MODULE, PYTHON_MODULE};
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Factory, Frame, Output, Processor, Records,
    Signal, Telemetry,
};
use rustc_hash::FxHashMap;
use serde::Deserialize;

/// Which stacks to symbolize.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stacks {
    /// Kernel and user.
    #[default]
    Both,
    /// Kernel only.
    Kernel,
    /// User only.
    User,
}

/// Cache sizes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Processes whose maps are kept.
    pub processes: usize,
    /// Resolved frames kept (kernel and user, each).
    pub frames: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            processes: 1024,
            frames: 100_000,
        }
    }
}

/// Config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SymbolizationConfig {
    /// `both` (default), `kernel` or `user`.
    pub stacks: Stacks,
    /// Frames kept per stack (innermost first).
    pub max_depth: usize,
    /// Also set `code.stacktrace` (for OTLP).
    pub code_stacktrace: bool,
    /// Read DWARF (the file's own or a separate debug file) for source files, lines and
    /// names; false: ELF symbol tables only — function names, much less memory for binaries
    /// with large debug info.
    pub debug_info: bool,
    /// Cache sizes.
    pub cache: CacheConfig,
}

impl Default for SymbolizationConfig {
    fn default() -> Self {
        SymbolizationConfig {
            stacks: Stacks::Both,
            max_depth: 32,
            code_stacktrace: true,
            debug_info: true,
            cache: CacheConfig::default(),
        }
    }
}

/// One line of /proc/<pid>/maps with a file behind it.
#[derive(Clone, Debug)]
struct Mapping {
    start: u64,
    end: u64,
    file_offset: u64,
    /// Interned path id.
    file: u32,
}

/// The mappings with their paths interned (sorted by address, as given).
fn interned(maps: &[oxeye_api::Mapping], intern: &mut impl FnMut(&str) -> u32) -> Vec<Mapping> {
    maps.iter()
        .map(|m| Mapping {
            start: m.start,
            end: m.end,
            file_offset: m.file_offset,
            file: intern(&m.path),
        })
        .collect()
}

/// Hit/miss counts of one cache.
#[derive(Default)]
struct Stats {
    hits: u64,
    misses: u64,
}

/// The symbolizer and its caches; lives on the symbolization thread.
struct Resolver {
    stacks: Stacks,
    max_depth: usize,
    code_stacktrace: bool,
    debug_info: bool,
    symbolizer: Symbolizer,
    /// Read at the first kernel address.
    kallsyms: Option<kallsyms::Kallsyms>,
    kernel_frames: LruCache<u64, Frame>,
    user_frames: LruCache<(u32, u64), Frame>,
    /// `None`: the process was gone when first seen.
    processes: LruCache<u32, Option<Arc<Vec<Mapping>>>>,
    /// Interned paths and their build-ids (read once per file).
    paths: Vec<(Arc<str>, Option<Arc<str>>)>,
    path_ids: FxHashMap<Arc<str>, u32>,
    kernel_module: Arc<str>,
    stats: [Stats; 3],
    telemetry: Telemetry,
}

fn frame_from(
    sym: &Symbolized<'_>,
    address: u64,
    module: Option<Arc<str>>,
    fallback_offset: u64,
) -> Frame {
    match sym {
        Symbolized::Sym(s) => Frame {
            address,
            function: Some(Arc::from(s.name.as_ref())),
            module,
            offset: s.offset as u64,
            file: s
                .code_info
                .as_ref()
                .map(|c| Arc::from(c.to_path().to_string_lossy().as_ref())),
            line: s.code_info.as_ref().and_then(|c| c.line),
            build_id: None,
        },
        Symbolized::Unknown(_) => Frame {
            address,
            module,
            offset: fallback_offset,
            ..Frame::default()
        },
    }
}

impl Resolver {
    fn intern(
        paths: &mut Vec<(Arc<str>, Option<Arc<str>>)>,
        ids: &mut FxHashMap<Arc<str>, u32>,
        path: &str,
    ) -> u32 {
        if let Some(&id) = ids.get(path) {
            return id;
        }
        let id = paths.len() as u32;
        let p: Arc<str> = Arc::from(path);
        let build_id = blazesym::helper::read_elf_build_id(path)
            .ok()
            .flatten()
            .map(|b| {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                Arc::from(hex)
            });
        paths.push((p.clone(), build_id));
        ids.insert(p, id);
        id
    }

    fn kernel_frame(&mut self, addr: u64) -> Frame {
        if let Some(f) = self.kernel_frames.get(&addr) {
            self.stats[0].hits += 1;
            return f.clone();
        }
        self.stats[0].misses += 1;
        let table = self
            .kallsyms
            .get_or_insert_with(|| kallsyms::Kallsyms::load().unwrap_or_default());
        let frame = match table.find(addr) {
            // No kernel function is a megabyte long: past the last symbol is unknown.
            Some(sym) if sym.offset < 1 << 20 => Frame {
                address: addr,
                function: Some(Arc::from(sym.name)),
                module: Some(self.kernel_module.clone()),
                offset: sym.offset,
                ..Frame::default()
            },
            _ => Frame {
                address: addr,
                module: Some(self.kernel_module.clone()),
                offset: addr,
                ..Frame::default()
            },
        };
        self.kernel_frames.put(addr, frame.clone());
        frame
    }

    fn maps(&mut self, pid: u32) -> Option<Arc<Vec<Mapping>>> {
        if let Some(m) = self.processes.get(&pid) {
            self.stats[2].hits += 1;
            return m.clone();
        }
        self.stats[2].misses += 1;
        let (paths, ids) = (&mut self.paths, &mut self.path_ids);
        let maps = oxeye_api::Mapping::of_process(pid)
            .map(|m| Arc::new(interned(&m, &mut |p| Self::intern(paths, ids, p))));
        self.processes.put(pid, maps.clone());
        maps
    }

    fn user_frame(&mut self, maps: Option<&[Mapping]>, addr: u64) -> Frame {
        let Some(m) = maps.and_then(|maps| {
            let i = maps.partition_point(|m| m.start <= addr);
            i.checked_sub(1).map(|i| &maps[i]).filter(|m| addr < m.end)
        }) else {
            return Frame {
                address: addr,
                offset: addr,
                ..Frame::default()
            };
        };
        let file_offset = addr - m.start + m.file_offset;
        let key = (m.file, file_offset);
        if let Some(f) = self.user_frames.get(&key) {
            self.stats[1].hits += 1;
            let mut f = f.clone();
            f.address = addr;
            return f;
        }
        self.stats[1].misses += 1;
        let (module, build_id) = self.paths[m.file as usize].clone();
        let mut elf = Elf::new(PathBuf::from(&*module));
        elf.debug_syms = self.debug_info;
        let src = Source::Elf(elf);
        let mut frame = match self
            .symbolizer
            .symbolize(&src, Input::FileOffset(&[file_offset]))
        {
            Ok(syms) => frame_from(&syms[0], addr, Some(module), file_offset),
            // An unreadable (e.g. deleted) file still gives module + offset.
            Err(_) => Frame {
                address: addr,
                module: Some(module),
                offset: file_offset,
                ..Frame::default()
            },
        };
        frame.build_id = build_id;
        self.user_frames.put(key, frame.clone());
        frame
    }

    fn publish(&self) {
        for (i, source) in ["kernel_frames", "user_frames", "processes"]
            .iter()
            .enumerate()
        {
            self.telemetry
                .set_counter("symbolization_cache_hits", source, self.stats[i].hits);
            self.telemetry
                .set_counter("symbolization_cache_misses", source, self.stats[i].misses);
        }
    }
}

/// `function+0xoff (module)` per frame, one per line.
pub fn stacktrace(frames: &[Frame]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in frames {
        let module = f.module.as_deref().unwrap_or("?");
        let _ = match &f.function {
            Some(func) => write!(out, "{func}+{:#x} ({module})", f.offset),
            None => write!(out, "{module}+{:#x}", f.offset),
        };
        if let (Some(file), Some(line)) = (&f.file, f.line) {
            let _ = write!(out, " at {file}:{line}");
        }
        out.push('\n');
    }
    out.pop();
    out
}

impl Resolver {
    /// Kernel frames, then user frames, innermost first, at most `depth` of each. `python`:
    /// the Python frames the receiver named, in stack order, for the user stack's tagged pairs
    /// (`PYTHON_TAG`: code object, then instruction), which are theirs.
    fn frames(
        &mut self,
        kernel: &[u64],
        user: &[u64],
        maps: impl FnOnce(&mut Self) -> Option<Arc<Vec<Mapping>>>,
        depth: usize,
        python: &[Frame],
    ) -> Vec<Frame> {
        let mut frames = Vec::new();
        if self.stacks != Stacks::User {
            for &a in kernel.iter().take(depth) {
                frames.push(self.kernel_frame(a));
            }
        }
        if self.stacks != Stacks::Kernel && !user.is_empty() {
            let maps = maps(self);
            let mut python = python.iter();
            let (mut i, mut n) = (0, 0);
            while i < user.len() && n < depth {
                let a = user[i];
                i += 1;
                if a & PYTHON_TAG != 0 {
                    // Its instruction follows.
                    i += 1;
                    frames.push(python.next().cloned().unwrap_or(Frame {
                        address: a,
                        module: Some(PYTHON_MODULE.into()),
                        ..Frame::default()
                    }));
                } else if a != 0 {
                    frames.push(self.user_frame(maps.as_deref().map(Vec::as_slice), a));
                } else {
                    continue;
                }
                n += 1;
            }
        }
        frames
    }

    fn symbolize(&mut self, batch: &mut Batch) {
        match &mut batch.records {
            Records::Spans(spans) => {
                for s in spans.iter_mut() {
                    let pid = s.task.map(|t| t.pid);
                    let frames = self.frames(
                        &s.kernel_stack,
                        &s.user_stack,
                        |r| pid.and_then(|pid| r.maps(pid)),
                        self.max_depth,
                        &[],
                    );
                    if self.code_stacktrace && !frames.is_empty() {
                        s.attributes.set("code.stacktrace", stacktrace(&frames));
                    }
                    s.frames = frames;
                }
            }
            Records::Samples(samples) => {
                // Samples of one process share its snapshot: intern its paths once per batch.
                let mut snapshots: FxHashMap<*const oxeye_api::Mapping, Arc<Vec<Mapping>>> =
                    FxHashMap::default();
                for s in samples.iter_mut() {
                    let (pid, snapshot) = (s.pid, &s.mappings);
                    let python: Vec<Frame> = s
                        .frames
                        .iter()
                        .filter(|f| f.module.as_deref() == Some(PYTHON_MODULE))
                        .cloned()
                        .collect();
                    let frames = self.frames(
                        &s.kernel_stack,
                        &s.user_stack,
                        |r| {
                            if snapshot.is_empty() {
                                return r.maps(pid);
                            }
                            let (paths, ids) = (&mut r.paths, &mut r.path_ids);
                            let maps = snapshots.entry(snapshot.as_ptr()).or_insert_with(|| {
                                Arc::new(interned(snapshot, &mut |p| Self::intern(paths, ids, p)))
                            });
                            Some(maps.clone())
                        },
                        usize::MAX,
                        &python,
                    );
                    s.frames = frames;
                }
            }
            _ => {}
        }
        self.publish();
    }
}

/// A Python frame in a user stack: its first word (the code object) carries this bit (no user
/// address does), its second is the instruction. The `ebpf` receiver names them.
pub const PYTHON_TAG: u64 = 1 << 63;

type Job = (Arc<Batch>, tokio::sync::oneshot::Sender<Arc<Batch>>);

/// The processor: hands batches with stacks to the symbolization thread.
pub struct Symbolization {
    jobs: std::sync::mpsc::Sender<Job>,
}

#[async_trait]
impl Processor for Symbolization {
    async fn process(&mut self, batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        let needs = match &batch.records {
            Records::Spans(spans) => spans
                .iter()
                .any(|s| !s.kernel_stack.is_empty() || !s.user_stack.is_empty()),
            Records::Samples(samples) => samples
                .iter()
                .any(|s| !s.kernel_stack.is_empty() || !s.user_stack.is_empty()),
            // Flows have no stacks; encoded spans never reach a processor (the engine decodes).
            _ => false,
        };
        if !needs {
            out.push(batch);
            return Ok(());
        }
        let (reply, done) = tokio::sync::oneshot::channel();
        self.jobs
            .send((batch, reply))
            .map_err(|_| "the symbolization thread stopped")?;
        out.push(done.await.map_err(|_| "the symbolization thread stopped")?);
        Ok(())
    }
}

/// Factory for [`Symbolization`].
pub struct SymbolizationFactory;

impl Factory for SymbolizationFactory {
    type Config = SymbolizationConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "symbolization";
    const SIGNALS: &'static [Signal] = &[Signal::Traces, Signal::Profiles];
    const DESCRIPTION: &'static str =
        "stack addresses to functions (kallsyms, ELF/DWARF via blazesym), cached";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-symbolization.md");

    fn validate(c: &SymbolizationConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.max_depth == 0 {
            e.push("max_depth", "must be at least 1");
        }
        if c.cache.processes == 0 {
            e.push("cache.processes", "must be at least 1");
        }
        if c.cache.frames == 0 {
            e.push("cache.frames", "must be at least 1");
        }
        e.into_result()
    }

    fn build(c: SymbolizationConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let size = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let telemetry = ctx.telemetry;
        std::thread::Builder::new()
            .name("oxeye-symbolize".into())
            .spawn(move || {
                let mut r = Resolver {
                    stacks: c.stacks,
                    max_depth: c.max_depth,
                    code_stacktrace: c.code_stacktrace,
                    debug_info: c.debug_info,
                    symbolizer: Symbolizer::new(),
                    kallsyms: None,
                    kernel_frames: LruCache::new(size(c.cache.frames)),
                    user_frames: LruCache::new(size(c.cache.frames)),
                    processes: LruCache::new(size(c.cache.processes)),
                    paths: Vec::new(),
                    path_ids: FxHashMap::default(),
                    kernel_module: Arc::from(KERNEL_MODULE),
                    stats: Default::default(),
                    telemetry,
                };
                // Ends when the processor (the sender) is dropped.
                for (mut batch, reply) in queue {
                    r.symbolize(Arc::make_mut(&mut batch));
                    let _ = reply.send(batch);
                }
            })?;
        Ok(Box::new(Symbolization { jobs }))
    }
}

oxeye_api::register!(SymbolizationFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{check, spans, ProcessorHarness};
    use oxeye_api::{Span, TaskContext};

    #[inline(never)]
    #[unsafe(no_mangle)]
    pub extern "C" fn oxeye_symbolization_marker() -> u64 {
        std::hint::black_box(42)
    }

    fn span_with(pid: u32, kernel: Vec<u64>, user: Vec<u64>) -> Batch {
        let s = Span {
            task: Some(TaskContext {
                pid,
                tid: pid,
                ..Default::default()
            }),
            kernel_stack: kernel,
            user_stack: user,
            ..Span::default()
        };
        Batch::spans(Arc::default(), vec![s])
    }

    #[test]
    fn user_addresses_resolve_to_functions_of_this_binary() {
        let mut h = ProcessorHarness::new::<SymbolizationFactory>("{stacks: user}").unwrap();
        let addr = oxeye_symbolization_marker as *const () as u64 + 4;
        let out = h
            .process(span_with(std::process::id(), vec![], vec![addr, addr]))
            .unwrap();
        let s = spans(&out)[0];
        assert_eq!(s.frames.len(), 2);
        let f = &s.frames[0];
        assert_eq!(
            f.function.as_deref(),
            Some("oxeye_symbolization_marker"),
            "{f:?}"
        );
        assert_eq!(f.offset, 4);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(f.module.as_deref(), exe.to_str());
        assert!(
            f.build_id.as_deref().is_some_and(|b| b.len() >= 16),
            "build-id read: {f:?}"
        );
        let trace = s
            .attributes
            .get("code.stacktrace")
            .map(|v| v.to_string())
            .unwrap_or_default();
        assert!(
            trace.starts_with("oxeye_symbolization_marker+0x4 ("),
            "{trace}"
        );
        // The second lookup of the same address is a cache hit.
        let counters = h.telemetry().counters();
        assert!(
            counters.contains(&("symbolization_cache_hits", "user_frames".into(), 1)),
            "{counters:?}"
        );
        assert!(
            counters.contains(&("symbolization_cache_misses", "user_frames".into(), 1)),
            "{counters:?}"
        );
    }

    #[test]
    fn without_debug_info_names_come_from_the_symbol_table() {
        let mut h =
            ProcessorHarness::new::<SymbolizationFactory>("{stacks: user, debug_info: false}")
                .unwrap();
        let addr = oxeye_symbolization_marker as *const () as u64 + 4;
        let out = h
            .process(span_with(std::process::id(), vec![], vec![addr]))
            .unwrap();
        let f = &spans(&out)[0].frames[0];
        assert_eq!(
            (f.function.as_deref(), f.offset, f.line),
            (Some("oxeye_symbolization_marker"), 4, None),
            "{f:?}"
        );
    }

    #[test]
    fn a_process_that_is_gone_gives_bare_frames_not_errors() {
        let mut h = ProcessorHarness::new::<SymbolizationFactory>("{}").unwrap();
        let out = h
            .process(span_with(u32::MAX - 7, vec![], vec![0x5555_0000_1234]))
            .unwrap();
        let f = &spans(&out)[0].frames[0];
        assert_eq!(
            (f.address, f.function.is_none(), f.module.is_none()),
            (0x5555_0000_1234, true, true)
        );
    }

    #[test]
    fn kernel_addresses_resolve_through_kallsyms() {
        // Real addresses need root; unprivileged kallsyms shows zeros.
        let Some(addr) = std::fs::read_to_string("/proc/kallsyms")
            .ok()
            .and_then(|k| {
                k.lines().find_map(|l| {
                    let mut f = l.split_whitespace();
                    let (a, _, n) = (f.next()?, f.next()?, f.next()?);
                    (n == "do_sys_openat2")
                        .then(|| u64::from_str_radix(a, 16).ok())
                        .flatten()
                })
            })
        else {
            panic!("do_sys_openat2 not in /proc/kallsyms");
        };
        assert!(addr != 0, "run as root: kallsyms addresses are hidden");
        let mut h = ProcessorHarness::new::<SymbolizationFactory>("{stacks: kernel}").unwrap();
        let out = h.process(span_with(1, vec![addr + 8], vec![])).unwrap();
        let f = &spans(&out)[0].frames[0];
        assert_eq!(f.function.as_deref(), Some("do_sys_openat2"), "{f:?}");
        assert_eq!((f.offset, f.module.as_deref()), (8, Some("[kernel]")));
    }

    #[test]
    fn validation() {
        assert!(check::<SymbolizationFactory>("{max_depth: 0}").is_err());
        assert!(check::<SymbolizationFactory>("{stacks: sideways}").is_err());
        assert!(check::<SymbolizationFactory>("{cache: {processes: 0}}")
            .unwrap_err()
            .to_string()
            .contains("cache.processes"));
    }
}
