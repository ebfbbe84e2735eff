//! IDs as text (`/ids/{id}`, `numgen decode`): digits only and below 2^63 decode, anything
//! else is an error, never a panic; a decoded ID composes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use numgen::http::ops;
use numgen::id::{self, IdParts, Layout, LayoutSettings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let layout = Layout::from_widths(LayoutSettings::default()).expect("the default layout");
    let decoded = id::describe_text(&layout, text);
    assert_eq!(
        decoded.is_some(),
        ops::decode(&layout, text).is_ok(),
        "{text:?}"
    );
    if let Some(d) = decoded {
        assert!(text.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
        assert_eq!(Ok(d.id), text.parse::<u64>(), "{text:?}");
        let parts = layout
            .decompose(d.id)
            .expect("a decoded id has no sign bit");
        let IdParts {
            datacenter,
            worker,
            sequence,
            degraded,
            ..
        } = parts;
        assert_eq!(
            (datacenter, worker, sequence, degraded),
            (d.datacenter, d.worker, d.sequence, d.degraded)
        );
        assert_eq!(layout.compose(parts), d.id);
    }
});
