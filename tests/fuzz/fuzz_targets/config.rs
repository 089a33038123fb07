//! The config loader (`${env}` expansion, YAML, positions, every component's validation): any
//! text gives a config or diagnostics with positions — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = oxeye::config::load("fuzz.yaml", text);
    for d in &loaded.diagnostics {
        let _ = d.to_string();
    }
});
