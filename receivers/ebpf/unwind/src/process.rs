//! A process's tables: each executable mapping with its object's [`Table`], built once per
//! object (device, inode, size, mtime) and shared between processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::maps::{self, Mapping};
use crate::{Rule, Table};

/// An object file's identity: device, inode, size, modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
}

/// The file behind `mapping` as process `pid` sees it (through `/proc/PID/root`, so across
/// mount namespaces), and its identity.
pub fn object(pid: u32, mapping: &Mapping) -> std::io::Result<(PathBuf, ObjectKey)> {
    use std::os::unix::fs::MetadataExt;
    let relative = mapping
        .path
        .strip_prefix("/")
        .map_err(|_| std::io::Error::other("not an absolute path"))?;
    let path = PathBuf::from(format!("/proc/{pid}/root")).join(relative);
    let m = std::fs::metadata(&path)?;
    let key = ObjectKey {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: m.mtime(),
    };
    Ok((path, key))
}

/// Tables built so far, by object. A failed build is remembered too (as an empty table), so an
/// object is read at most once.
#[derive(Default)]
pub struct Objects {
    tables: HashMap<ObjectKey, Arc<Table>>,
    /// Objects that could not be read or parsed, with why.
    pub failures: Vec<(PathBuf, String)>,
}

/// One mapping and what covers it.
pub struct Mapped {
    pub mapping: Mapping,
    /// `pc - bias` is an address of the object.
    pub bias: u64,
    pub table: Arc<Table>,
}

/// A process's executable mappings with their tables.
pub struct Process {
    pub pid: u32,
    pub mapped: Vec<Mapped>,
}

impl Objects {
    /// The table of `mapping` of process `pid` (read through `/proc/PID/root`, so it works across
    /// mount namespaces), and the mapping's bias.
    fn get(&mut self, pid: u32, mapping: &Mapping) -> Option<(u64, Arc<Table>)> {
        let fail = |objects: &mut Objects, e: String| {
            objects.failures.push((mapping.path.clone(), e));
            None
        };
        let (path, key) = match object(pid, mapping) {
            Ok(o) => o,
            Err(e) => return fail(self, e.to_string()),
        };
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => return fail(self, e.to_string()),
        };
        let file = match object::File::parse(&*data) {
            Ok(f) => f,
            Err(e) => return fail(self, e.to_string()),
        };
        let bias = maps::bias(&file, mapping)?;
        if let Some(t) = self.tables.get(&key) {
            return Some((bias, Arc::clone(t)));
        }
        let table = match Table::from_elf(&data) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                self.failures.push((mapping.path.clone(), e.to_string()));
                Arc::new(Table::default())
            }
        };
        self.tables.insert(key, Arc::clone(&table));
        Some((bias, table))
    }
}

impl Process {
    /// Reads `/proc/PID/maps` and the tables of every executable mapping.
    pub fn load(pid: u32, objects: &mut Objects) -> std::io::Result<Process> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let mapped = maps::parse(&text)
            .into_iter()
            .filter_map(|mapping| {
                let (bias, table) = objects.get(pid, &mapping)?;
                Some(Mapped {
                    mapping,
                    bias,
                    table,
                })
            })
            .collect();
        Ok(Process { pid, mapped })
    }

    /// The mapping holding `pc`.
    pub fn mapped(&self, pc: u64) -> Option<&Mapped> {
        self.mapped
            .iter()
            .find(|m| m.mapping.start <= pc && pc < m.mapping.end)
    }

    /// The rule at `pc`; `None` where no table covers it.
    pub fn rule(&self, pc: u64) -> Option<Rule> {
        let m = self.mapped(pc)?;
        match m.table.lookup(pc.wrapping_sub(m.bias)) {
            Rule::Invalid => None,
            r => Some(r),
        }
    }
}
