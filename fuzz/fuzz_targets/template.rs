//! Format templates (SPEC 2): any text, any `seq_length`, parses or fails with an error;
//! a template that parses renders, for any value and time, without panicking, and its
//! `{SEQ}` width is within 1–20.
#![no_main]

use libfuzzer_sys::fuzz_target;
use numgen::format::{NodeWidths, RenderCtx, Template};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(source) = std::str::from_utf8(rest) else {
        return;
    };
    // Low bit: with or without a seq_length; the rest: the length, in range as the config
    // parser hands it over (1–20).
    let seq_length = (first & 1 == 1).then_some(1 + (first >> 1) % 20);
    let Ok(template) = Template::parse(source, seq_length) else {
        return;
    };
    assert!((1..=20).contains(&template.seq_width()), "{source:?}");
    let seed = u64::from_le_bytes(std::array::from_fn(|i| data.get(i).copied().unwrap_or(0)));
    for (value, unix_ms) in [
        (0, 0),
        (u64::MAX, u64::MAX),
        (seed, seed),
        (seed, seed >> 20),
    ] {
        let ctx = RenderCtx {
            prefix: "FUZZ",
            value,
            unix_ms,
            offset_s: (seed % 100_801) as i32 - 50_400,
            dc: seed & 7,
            worker: seed & 63,
            widths: NodeWidths::default(),
            degraded: seed & 1 == 1,
        };
        let _ = template.render_string(&ctx);
    }
});
