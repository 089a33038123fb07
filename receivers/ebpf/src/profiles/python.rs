//! Naming Python frames: a sample's user stack holds each as two words (`code | PY_FRAME_TAG`,
//! then its instruction). They are named while the process runs (its code objects are read at
//! drain time, cached per process, code and instruction), and a record of a stack with Python
//! frames leaves with all its frames: native ones as addresses (the `symbolization` processor
//! names them and keeps the Python ones), Python ones with function, file and line, module
//! `[python]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oxeye_api::profile::{KERNEL_MODULE, PYTHON_MODULE};
use oxeye_api::{Frame, Sample};
use oxeye_ebpf_common::PY_FRAME_TAG;
use oxeye_unwind::python::{Interpreter, ProcessMemory, PyFrame};

/// Named frames kept at most (then the cache starts again).
const MAX_NAMES: usize = 65_536;

pub struct PythonNames {
    interpreters: Arc<Mutex<HashMap<u32, Interpreter>>>,
    names: HashMap<(u32, u64, u64), Frame>,
}

impl PythonNames {
    pub fn new(interpreters: Arc<Mutex<HashMap<u32, Interpreter>>>) -> PythonNames {
        PythonNames {
            interpreters,
            names: HashMap::new(),
        }
    }

    /// Names the Python frames of a user stack of process `pid` not named yet.
    pub fn see(&mut self, pid: u32, user: &[u64]) {
        let mut pairs = Vec::new();
        let mut i = 0;
        while i + 1 < user.len() {
            if user[i] & PY_FRAME_TAG != 0 {
                let key = (pid, user[i], user[i + 1]);
                if !self.names.contains_key(&key) {
                    pairs.push(key);
                }
                i += 2;
            } else {
                i += 1;
            }
        }
        if pairs.is_empty() {
            return;
        }
        let Some(interp) = self
            .interpreters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .copied()
        else {
            return;
        };
        if self.names.len() + pairs.len() > MAX_NAMES {
            self.names.clear();
        }
        let mem = ProcessMemory(pid);
        for key in pairs {
            let frame = PyFrame {
                code: key.1 & !PY_FRAME_TAG,
                // 3.10's is an `int f_lasti`: the kernel read 8 bytes.
                instr: if interp.layout.version < (3, 11) {
                    key.2 & 0xffff_ffff
                } else {
                    key.2
                },
                entry: false,
            };
            let f = match interp.describe(&mem, &frame) {
                Some(l) => Frame {
                    address: key.1,
                    function: Some(l.function.into()),
                    module: Some(PYTHON_MODULE.into()),
                    file: Some(l.file.into()),
                    line: l.line.and_then(|l| u32::try_from(l).ok()),
                    ..Frame::default()
                },
                // Gone meanwhile (the process, or the code object).
                None => Frame {
                    address: key.1,
                    function: Some("[unknown python frame]".into()),
                    module: Some(PYTHON_MODULE.into()),
                    ..Frame::default()
                },
            };
            self.names.insert(key, f);
        }
    }

    /// A record whose user stack holds Python frames gets all its frames: kernel and native
    /// user frames as addresses, Python frames named; each Python pair becomes one frame.
    pub fn name(&self, s: &mut Sample) {
        if !s.user_stack.iter().any(|&a| a & PY_FRAME_TAG != 0) {
            return;
        }
        let mut frames: Vec<Frame> = s
            .kernel_stack
            .iter()
            .map(|&a| Frame {
                address: a,
                module: Some(KERNEL_MODULE.into()),
                offset: a,
                ..Frame::default()
            })
            .collect();
        let user = &s.user_stack;
        let mut i = 0;
        while i < user.len() {
            let a = user[i];
            if a & PY_FRAME_TAG != 0 && i + 1 < user.len() {
                let known = self.names.get(&(s.pid, a, user[i + 1])).cloned();
                frames.push(known.unwrap_or_else(|| Frame {
                    address: a,
                    function: Some("[unknown python frame]".into()),
                    module: Some(PYTHON_MODULE.into()),
                    ..Frame::default()
                }));
                i += 2;
            } else {
                frames.push(Frame {
                    address: a,
                    offset: a,
                    ..Frame::default()
                });
                i += 1;
            }
        }
        s.frames = frames;
    }
}
