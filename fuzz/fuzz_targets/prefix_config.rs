//! Prefix config bodies (SPEC 3.1): any bytes give a config or a `PrefixError`; a config
//! that parses, shown as the API shows it, parses back to itself; no message names an
//! internal struct.
#![no_main]

use libfuzzer_sys::fuzz_target;
use numgen::prefix::PrefixConfig;

fuzz_target!(|body: &[u8]| {
    match PrefixConfig::from_request(body) {
        Ok((config, _)) => {
            let shown = serde_json::to_vec(&config.to_json()).expect("a config serializes");
            let (again, _) = PrefixConfig::from_request(&shown).expect("a shown config parses");
            assert_eq!(config, again);
        }
        Err(e) => {
            // Unless the body itself says so (messages quote what was sent).
            let msg = e.to_string();
            let sent = String::from_utf8_lossy(body);
            for internal in ["RawConfig", "U64OrString"] {
                assert!(!msg.contains(internal) || sent.contains(internal), "{msg}");
            }
        }
    }
});
