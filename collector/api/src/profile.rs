//! The tables a profile format is made of — strings, functions, mappings, locations — built
//! from [`Sample`]s with every entry stored once. pprof (`profile.proto`) and OTLP profiles
//! share this shape: an exporter turns each table into its own messages.
//!
//! Index 0 of every table is the null entry (the empty string, no function, no mapping, no
//! location): pprof numbers ids from 1 and OTLP reserves index 0 for "not set", so an index
//! here is the pprof id and the OTLP index alike.

use std::collections::HashMap;
use std::sync::Arc;

use crate::data::{Frame, Mapping, Sample};

/// The module name the symbolization processor gives kernel frames.
pub const KERNEL_MODULE: &str = "[kernel]";

/// The module name of interpreted CPython frames (named from their code objects).
pub const PYTHON_MODULE: &str = "[python]";

/// A function: name and source file (indexes into [`Tables::strings`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FunctionEntry {
    /// Demangled name.
    pub name: u32,
    /// Source file (0: unknown).
    pub file: u32,
}

/// An executable mapping of a process, or the kernel's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MappingEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file where it begins.
    pub file_offset: u64,
    /// File path (string index).
    pub path: u32,
    /// GNU build-id, hex (string index; 0: unknown).
    pub build_id: u32,
    /// True when some location in it has a function name.
    pub has_functions: bool,
}

/// A code address, symbolized or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocationEntry {
    /// Mapping index (0: none known).
    pub mapping: u32,
    /// The address.
    pub address: u64,
    /// Function index (0: not symbolized).
    pub function: u32,
    /// Source line (0: unknown).
    pub line: u32,
}

/// Deduplicated tables; see the module docs.
#[derive(Debug)]
pub struct Tables {
    /// Strings; `strings[0]` is "".
    pub strings: Vec<Arc<str>>,
    /// Functions; `functions[0]` is the null entry.
    pub functions: Vec<FunctionEntry>,
    /// Mappings; `mappings[0]` is the null entry.
    pub mappings: Vec<MappingEntry>,
    /// Locations; `locations[0]` is the null entry.
    pub locations: Vec<LocationEntry>,
    string_ids: HashMap<Arc<str>, u32>,
    function_ids: HashMap<FunctionEntry, u32>,
    /// Keyed by range and path; its build id and `has_functions` may be filled in later.
    mapping_ids: HashMap<(u64, u64, u64, u32), u32>,
    location_ids: HashMap<LocationEntry, u32>,
    /// The pseudo-mappings of kernel and of Python frames (0: none yet).
    kernel: u32,
    python: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Tables::new()
    }
}

impl Tables {
    /// Empty tables (each holding only its null entry).
    pub fn new() -> Tables {
        let empty: Arc<str> = Arc::from("");
        Tables {
            strings: vec![empty.clone()],
            functions: vec![FunctionEntry::default()],
            mappings: vec![MappingEntry::default()],
            locations: vec![LocationEntry::default()],
            string_ids: HashMap::from([(empty, 0)]),
            function_ids: HashMap::new(),
            mapping_ids: HashMap::new(),
            location_ids: HashMap::new(),
            kernel: 0,
            python: 0,
        }
    }

    /// The index of `s`, added if new.
    pub fn string(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        let s: Arc<str> = Arc::from(s);
        self.strings.push(s.clone());
        self.string_ids.insert(s, i);
        i
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u32 {
        let key = FunctionEntry {
            name: self.string(name),
            file: file.map_or(0, |f| self.string(f)),
        };
        *self.function_ids.entry(key).or_insert_with(|| {
            self.functions.push(key);
            self.functions.len() as u32 - 1
        })
    }

    fn mapping(&mut self, m: &Mapping) -> u32 {
        let path = self.string(&m.path);
        let key = (m.start, m.end, m.file_offset, path);
        *self.mapping_ids.entry(key).or_insert_with(|| {
            self.mappings.push(MappingEntry {
                start: m.start,
                end: m.end,
                file_offset: m.file_offset,
                path,
                build_id: 0,
                has_functions: false,
            });
            self.mappings.len() as u32 - 1
        })
    }

    /// A pseudo-mapping named `module`, without a range: kernel addresses are absolute, and a
    /// Python frame's "address" is its code object.
    fn pseudo_mapping(&mut self, module: &str) -> u32 {
        let path = self.string(module);
        self.mappings.push(MappingEntry {
            path,
            ..MappingEntry::default()
        });
        self.mappings.len() as u32 - 1
    }

    /// What kind of code a location is, as OpenTelemetry's `profile.frame.type` names it:
    /// `kernel`, `cpython` or `native`.
    pub fn frame_type(&self, location: &LocationEntry) -> &'static str {
        match location.mapping {
            0 => "native",
            m if m == self.kernel => "kernel",
            m if m == self.python => "cpython",
            _ => "native",
        }
    }

    fn location(&mut self, key: LocationEntry) -> u32 {
        *self.location_ids.entry(key).or_insert_with(|| {
            self.locations.push(key);
            self.locations.len() as u32 - 1
        })
    }

    fn frame_location(&mut self, f: &Frame, mappings: &[Mapping], kernel: bool) -> u32 {
        let mapping = if kernel {
            if self.kernel == 0 {
                self.kernel = self.pseudo_mapping(KERNEL_MODULE);
            }
            self.kernel
        } else if f.module.as_deref() == Some(PYTHON_MODULE) {
            if self.python == 0 {
                self.python = self.pseudo_mapping(PYTHON_MODULE);
            }
            self.python
        } else {
            Mapping::find(mappings, f.address).map_or(0, |m| self.mapping(m))
        };
        let function = f
            .function
            .as_deref()
            .map_or(0, |name| self.function(name, f.file.as_deref()));
        if mapping != 0 {
            let build_id = f.build_id.as_deref().map_or(0, |b| self.string(b));
            let m = &mut self.mappings[mapping as usize];
            m.has_functions |= function != 0;
            if m.build_id == 0 {
                m.build_id = build_id;
            }
        }
        self.location(LocationEntry {
            mapping,
            address: f.address,
            function,
            line: f.line.unwrap_or(0),
        })
    }

    /// The locations of a sample's stack, innermost first (kernel frames, then user frames):
    /// its symbolized frames when it has them, else its raw addresses.
    pub fn stack(&mut self, s: &Sample) -> Vec<u32> {
        if !s.frames.is_empty() {
            return s
                .frames
                .iter()
                .map(|f| {
                    let kernel = f.module.as_deref() == Some(KERNEL_MODULE);
                    self.frame_location(f, &s.mappings, kernel)
                })
                .collect();
        }
        let raw = |address| Frame {
            address,
            ..Frame::default()
        };
        let kernel: Vec<u32> = s
            .kernel_stack
            .iter()
            .map(|&a| self.frame_location(&raw(a), &[], true))
            .collect();
        let user = s
            .user_stack
            .iter()
            .map(|&a| self.frame_location(&raw(a), &s.mappings, false));
        kernel.into_iter().chain(user).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_stored_once_and_index_zero_is_null() {
        let mappings: Arc<[Mapping]> = Arc::from(vec![Mapping {
            start: 0x1000,
            end: 0x9000,
            file_offset: 0,
            path: "/bin/app".into(),
        }]);
        let frame = |address, function: &str| Frame {
            address,
            function: Some(function.into()),
            module: Some("/bin/app".into()),
            build_id: Some("abcd".into()),
            line: Some(7),
            ..Frame::default()
        };
        let s = Sample {
            frames: vec![
                Frame {
                    address: 0xffff_ffff_8100_0000,
                    function: Some("do_syscall_64".into()),
                    module: Some(KERNEL_MODULE.into()),
                    ..Frame::default()
                },
                frame(0x1010, "leaf"),
                frame(0x1020, "main"),
            ],
            mappings: mappings.clone(),
            ..Sample::default()
        };
        let mut t = Tables::new();
        let a = t.stack(&s);
        let b = t.stack(&s);
        assert_eq!(a, b, "the same stack twice: the same locations");
        assert_eq!(a, [1, 2, 3]);
        assert_eq!(t.locations.len(), 4);
        assert_eq!(t.functions.len(), 4);
        assert_eq!(t.mappings.len(), 3, "null, kernel, /bin/app");
        let app = &t.mappings[t.locations[2].mapping as usize];
        assert_eq!(&*t.strings[app.path as usize], "/bin/app");
        assert_eq!(&*t.strings[app.build_id as usize], "abcd");
        assert!(app.has_functions);
        assert_eq!(&*t.strings[0], "");
        // Without frames: raw addresses, user ones in their mapping.
        let raw = Sample {
            kernel_stack: vec![0xffff_ffff_8100_0001],
            user_stack: vec![0x1010, 0x7777_0000],
            mappings: mappings.clone(),
            ..Sample::default()
        };
        let locs = t.stack(&raw);
        let m: Vec<u32> = locs
            .iter()
            .map(|&l| t.locations[l as usize].mapping)
            .collect();
        assert_eq!(m, [t.locations[1].mapping, t.locations[2].mapping, 0]);
        assert!(locs.iter().all(|&l| t.locations[l as usize].function == 0));
        // A Python frame (its address a tagged code object, in no mapping) between native ones.
        let py = Sample {
            frames: vec![
                frame(0x1010, "_PyEval_EvalFrameDefault"),
                Frame {
                    address: 1 << 63 | 0x7f00_1234_5678,
                    function: Some("handler".into()),
                    module: Some(PYTHON_MODULE.into()),
                    file: Some("app.py".into()),
                    line: Some(12),
                    ..Frame::default()
                },
            ],
            mappings,
            ..Sample::default()
        };
        let locs = t.stack(&py);
        let types = |locs: &[u32]| -> Vec<&str> {
            locs.iter()
                .map(|&l| t.frame_type(&t.locations[l as usize]))
                .collect()
        };
        assert_eq!(types(&locs), ["native", "cpython"]);
        assert_eq!(types(&a), ["kernel", "native", "native"]);
        let python = &t.mappings[t.locations[locs[1] as usize].mapping as usize];
        assert_eq!(&*t.strings[python.path as usize], PYTHON_MODULE);
        assert_eq!(
            t.frame_type(&t.locations[0]),
            "native",
            "no mapping: native"
        );
    }
}
