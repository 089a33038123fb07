//! What one stack delta says: how to find the caller's registers from the callee's.

/// Where the canonical frame address (the stack pointer just before the call) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cfa {
    /// `rsp + n`
    Rsp(i32),
    /// `rbp + n`
    Rbp(i32),
    /// `*(rsp + n)`: a stack realigned in the prologue keeps the old one in a slot.
    DerefRsp(i32),
    /// `*(rbp + n)` (gcc's `DW_OP_breg6 n; DW_OP_deref` after `and rsp, -32`).
    DerefRbp(i32),
}

/// Where the caller's `rbp` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rbp {
    /// Not changed by this function (yet).
    Same,
    /// Saved at `cfa + n`.
    AtCfa(i32),
    /// Saved at `rbp + n` (the realigned-stack prologue).
    AtRbp(i32),
}

/// How to step from a frame to its caller at one address. The return address is always at
/// `cfa - 8` (x86-64); rules that say otherwise are [`Rule::Invalid`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// An ordinary frame.
    Frame { cfa: Cfa, rbp: Rbp },
    /// A PLT stub: `cfa = rsp + 8`, plus 8 more once `pc & 15 >= threshold` (gcc's expression
    /// for the lazy-binding stubs, which push once).
    Plt { threshold: u8 },
    /// A signal trampoline (`__restore_rt`): the interrupted registers are in the
    /// `ucontext` at `rsp`.
    Signal,
    /// The outermost frame (`_start`, a thread's start): the stack is complete.
    Stop,
    /// No usable rule: the walker falls back to one frame-pointer step.
    Invalid,
}

impl Rule {
    /// `rsp + 8`: where a stub or a function's first instruction stands.
    pub const ENTRY: Rule = Rule::Frame {
        cfa: Cfa::Rsp(8),
        rbp: Rbp::Same,
    };
}
