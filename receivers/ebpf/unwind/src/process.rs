//! A process's tables: each executable mapping with its object's [`Table`], built once per
//! object (device, inode, size, mtime) and shared between processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::maps::{self, Mapping};
use crate::{Rule, Table};

/// Tables built so far, by object. A failed build is remembered too (as an empty table), so an
/// object is read at most once.
#[derive(Default)]
pub struct Objects {
    tables: HashMap<(u64, u64, u64, i64), Arc<Table>>,
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
        use std::os::unix::fs::MetadataExt;
        let path =
            PathBuf::from(format!("/proc/{pid}/root")).join(mapping.path.strip_prefix("/").ok()?);
        let fail = |objects: &mut Objects, e: String| {
            objects.failures.push((mapping.path.clone(), e));
            None
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => return fail(self, e.to_string()),
        };
        let key = (meta.dev(), meta.ino(), meta.size(), meta.mtime());
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
