//! Format templates (SPEC section 2): parsed once when a prefix is registered, with errors
//! that name the offending text and its position, then rendered straight into the
//! response buffer for every number.

mod civil;
pub mod clash;

pub use civil::{Civil, civil_from_unix_ms};

/// Longest template accepted, in characters.
pub const MAX_TEMPLATE_LEN: usize = 128;
/// Widest `{SEQ:N}` accepted (u64::MAX has 20 digits).
pub const MAX_SEQ_WIDTH: u8 = 20;

/// Why a template is invalid. Positions count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("format must not be empty")]
    Empty,
    #[error("format is {0} characters long; at most 128 are allowed")]
    TooLong(usize),
    #[error("Missing {{SEQ}} tag")]
    MissingSeq,
    #[error("second sequence placeholder '{text}' at position {pos}: a format has exactly one")]
    SecondSeq { text: String, pos: usize },
    #[error("'{text}' at position {pos}: the width must be a number from 1 to 20")]
    SeqWidth { text: String, pos: usize },
    #[error("'{{SEQ}}' at position {pos} needs seq_length, or write {{SEQ:N}}")]
    SeqNeedsLength { pos: usize },
    #[error("seq_length {field} differs from the width of '{text}' at position {pos}")]
    SeqLengthMismatch { field: u8, text: String, pos: usize },
    #[error(
        "unknown placeholder '{text}' at position {pos} (known: {{SEQ:N}}, {{prefix}}, {{year}}, {{yy}}, {{month}}, {{day}}, {{hour}}, {{date}}, {{dc}}, {{worker}}, {{flag}})"
    )]
    UnknownPlaceholder { text: String, pos: usize },
    #[error("character '{ch}' at position {pos} is not allowed (allowed: A-Z a-z 0-9 - _ . / : #)")]
    BadChar { ch: char, pos: usize },
    #[error("'{{' at position {pos} is never closed")]
    Unclosed { pos: usize },
    #[error("'}}' at position {pos} has no opening '{{'")]
    StrayClose { pos: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Seq,
    Prefix,
    Year,
    Yy,
    Month,
    Day,
    Hour,
    Date,
    Dc,
    Worker,
    Flag,
}

impl Part {
    /// The placeholder's name as written (the sequence's as `{SEQ}`); `None` for literals.
    fn name(&self) -> Option<&'static str> {
        Some(match self {
            Part::Literal(_) => return None,
            Part::Seq => "{SEQ}",
            Part::Prefix => "{prefix}",
            Part::Year => "{year}",
            Part::Yy => "{yy}",
            Part::Month => "{month}",
            Part::Day => "{day}",
            Part::Hour => "{hour}",
            Part::Date => "{date}",
            Part::Dc => "{dc}",
            Part::Worker => "{worker}",
            Part::Flag => "{flag}",
        })
    }
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    seq_width: u8,
    uses_date: bool,
}

/// The largest `{dc}` and `{worker}` values of the layout, and the widths they render at:
/// the decimal width of the largest value (SPEC 1.3: 6 worker bits render `07`), so that
/// every placeholder but the sequence has a fixed width and a rendered string reads back
/// to one (value, fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeWidths {
    dc_max: u64,
    worker_max: u64,
    dc: u8,
    worker: u8,
}

impl NodeWidths {
    pub fn new(dc_max: u64, worker_max: u64) -> NodeWidths {
        let width = |max: u64| itoa::Buffer::new().format(max).len() as u8;
        NodeWidths {
            dc_max,
            worker_max,
            dc: width(dc_max),
            worker: width(worker_max),
        }
    }

    /// The widths under `layout`.
    pub fn of_layout(layout: &crate::id::Layout) -> NodeWidths {
        NodeWidths::new(layout.max_datacenter(), layout.max_worker())
    }

    pub fn dc_max(&self) -> u64 {
        self.dc_max
    }
    pub fn worker_max(&self) -> u64 {
        self.worker_max
    }
    /// Digits `{dc}` renders.
    pub fn dc(&self) -> usize {
        usize::from(self.dc)
    }
    /// Digits `{worker}` renders.
    pub fn worker(&self) -> usize {
        usize::from(self.worker)
    }
}

impl Default for NodeWidths {
    /// The default layout's: 3 datacenter bits (`7`), 6 worker bits (`63`).
    fn default() -> Self {
        NodeWidths::new(7, 63)
    }
}

/// Everything one number's rendering may use.
#[derive(Clone, Copy, Debug)]
pub struct RenderCtx<'a> {
    pub prefix: &'a str,
    /// The value `{SEQ}` shows: the snowflake ID or the sequence counter.
    pub value: u64,
    /// Issue time (Unix ms) for the date placeholders.
    pub unix_ms: u64,
    /// The prefix's UTC offset in seconds.
    pub offset_s: i32,
    pub dc: u64,
    pub worker: u64,
    /// The widths `{dc}` and `{worker}` are padded to.
    pub widths: NodeWidths,
    pub degraded: bool,
}

fn literal_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '#')
}

impl Template {
    /// Parses `source`; `seq_length` is the prefix config's field (already range-checked).
    pub fn parse(source: &str, seq_length: Option<u8>) -> Result<Template, TemplateError> {
        let chars: Vec<char> = source.chars().collect();
        if chars.is_empty() {
            return Err(TemplateError::Empty);
        }
        if chars.len() > MAX_TEMPLATE_LEN {
            return Err(TemplateError::TooLong(chars.len()));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut seq_width: Option<u8> = None;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let pos = i + 1;
            match c {
                '{' => {
                    let close = chars[i + 1..]
                        .iter()
                        .position(|&c| c == '}' || c == '{')
                        .map(|off| i + 1 + off)
                        .filter(|&j| chars[j] == '}')
                        .ok_or(TemplateError::Unclosed { pos })?;
                    let name: String = chars[i + 1..close].iter().collect();
                    let text = format!("{{{name}}}");
                    let part = match name.as_str() {
                        "prefix" => Part::Prefix,
                        "year" => Part::Year,
                        "yy" => Part::Yy,
                        "month" => Part::Month,
                        "day" => Part::Day,
                        "hour" => Part::Hour,
                        "date" => Part::Date,
                        "dc" => Part::Dc,
                        "worker" => Part::Worker,
                        "flag" => Part::Flag,
                        n if n == "SEQ" || n.starts_with("SEQ:") => {
                            if seq_width.is_some() {
                                return Err(TemplateError::SecondSeq { text, pos });
                            }
                            let width = match n.strip_prefix("SEQ:") {
                                None => seq_length.ok_or(TemplateError::SeqNeedsLength { pos })?,
                                Some(digits) => {
                                    // Plain digits, no sign, no leading zero.
                                    let plain = !digits.starts_with('0')
                                        && digits.bytes().all(|b| b.is_ascii_digit());
                                    let w = digits
                                        .parse::<u8>()
                                        .ok()
                                        .filter(|w| plain && (1..=MAX_SEQ_WIDTH).contains(w))
                                        .ok_or_else(|| TemplateError::SeqWidth {
                                            text: text.clone(),
                                            pos,
                                        })?;
                                    if let Some(field) = seq_length.filter(|&f| f != w) {
                                        return Err(TemplateError::SeqLengthMismatch {
                                            field,
                                            text,
                                            pos,
                                        });
                                    }
                                    w
                                }
                            };
                            seq_width = Some(width);
                            Part::Seq
                        }
                        _ => return Err(TemplateError::UnknownPlaceholder { text, pos }),
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal).into()));
                    }
                    parts.push(part);
                    i = close + 1;
                }
                '}' => return Err(TemplateError::StrayClose { pos }),
                c if literal_allowed(c) => {
                    literal.push(c);
                    i += 1;
                }
                ch => return Err(TemplateError::BadChar { ch, pos }),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.into()));
        }
        let seq_width = seq_width.ok_or(TemplateError::MissingSeq)?;
        let uses_date = parts.iter().any(|p| {
            matches!(
                p,
                Part::Year | Part::Yy | Part::Month | Part::Day | Part::Hour | Part::Date
            )
        });
        Ok(Template {
            parts,
            seq_width,
            uses_date,
        })
    }

    /// The zero-padded width of the sequence placeholder.
    pub fn seq_width(&self) -> u8 {
        self.seq_width
    }

    /// True when the template shows a date field.
    pub fn uses_date(&self) -> bool {
        self.uses_date
    }

    /// True when the template has the placeholder `name` (`"{month}"`); the sequence
    /// placeholder is `"{SEQ}"` whatever its width.
    pub fn has(&self, name: &str) -> bool {
        self.parts.iter().any(|p| p.name() == Some(name))
    }

    /// Appends one rendered number to `out`.
    #[inline]
    pub fn render(&self, out: &mut Vec<u8>, ctx: &RenderCtx<'_>) {
        let civil = if self.uses_date {
            civil_from_unix_ms(ctx.unix_ms, ctx.offset_s)
        } else {
            Civil::default()
        };
        let mut buf = itoa::Buffer::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Seq => {
                    let digits = buf.format(ctx.value).as_bytes();
                    let pad = usize::from(self.seq_width).saturating_sub(digits.len());
                    out.resize(out.len() + pad, b'0');
                    out.extend_from_slice(digits);
                }
                Part::Prefix => out.extend_from_slice(ctx.prefix.as_bytes()),
                Part::Year => push_padded(out, u64::from(civil.year), 4),
                Part::Yy => push_padded(out, u64::from(civil.year % 100), 2),
                Part::Month => push_padded(out, u64::from(civil.month), 2),
                Part::Day => push_padded(out, u64::from(civil.day), 2),
                Part::Hour => push_padded(out, u64::from(civil.hour), 2),
                Part::Date => {
                    push_padded(out, u64::from(civil.year), 4);
                    push_padded(out, u64::from(civil.month), 2);
                    push_padded(out, u64::from(civil.day), 2);
                }
                Part::Dc => push_padded(out, ctx.dc, ctx.widths.dc()),
                Part::Worker => push_padded(out, ctx.worker, ctx.widths.worker()),
                Part::Flag => {
                    if ctx.degraded {
                        out.push(b'D');
                    }
                }
            }
        }
    }

    /// Renders one number into a new string.
    pub fn render_string(&self, ctx: &RenderCtx<'_>) -> String {
        let mut out = Vec::with_capacity(48);
        self.render(&mut out, ctx);
        // Every byte written is ASCII: literals are checked at parse time, the rest digits.
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn push_padded(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(value).as_bytes();
    out.resize(out.len() + width.saturating_sub(digits.len()), b'0');
    out.extend_from_slice(digits);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(value: u64) -> RenderCtx<'static> {
        RenderCtx {
            prefix: "ORDERS",
            value,
            // 2025-11-21T23:22:36.5Z
            unix_ms: 1_763_767_356_500,
            offset_s: 0,
            dc: 3,
            worker: 17,
            widths: NodeWidths::default(),
            degraded: false,
        }
    }

    #[test]
    fn seed_table() {
        let t = Template::parse("ORD-{year}-{SEQ:6}", None).unwrap();
        assert_eq!(t.seq_width(), 6);
        assert!(t.uses_date());
        assert_eq!(t.render_string(&ctx(42)), "ORD-2025-000042");
        assert_eq!(
            Template::parse("INVALID-2024", None)
                .unwrap_err()
                .to_string(),
            "Missing {SEQ} tag"
        );
        assert!(matches!(
            Template::parse("ERR-{SEQ:0}", None),
            Err(TemplateError::SeqWidth { pos: 5, .. })
        ));
        assert_eq!(Template::parse("{SEQ:1}", None).unwrap().seq_width(), 1);
        assert_eq!(Template::parse("{SEQ:20}", None).unwrap().seq_width(), 20);
    }

    #[test]
    fn invalid_templates_name_the_text_and_position() {
        let cases: &[(&str, Option<u8>, &str)] = &[
            ("", None, "format must not be empty"),
            ("A{SEQ:21}", None, "'{SEQ:21}' at position 2"),
            ("A{SEQ:x}", None, "'{SEQ:x}' at position 2"),
            ("A{SEQ:+5}", None, "'{SEQ:+5}' at position 2"),
            ("A{SEQ:05}", None, "'{SEQ:05}' at position 2"),
            ("{SEQ}", None, "'{SEQ}' at position 1 needs seq_length"),
            (
                "{SEQ:4}-{SEQ:4}",
                None,
                "second sequence placeholder '{SEQ:4}' at position 9",
            ),
            (
                "{SEQ:4}",
                Some(5),
                "seq_length 5 differs from the width of '{SEQ:4}' at position 1",
            ),
            (
                "X{nope}{SEQ:3}",
                None,
                "unknown placeholder '{nope}' at position 2",
            ),
            ("{SEQ:3}'", None, "character ''' at position 8"),
            ("{SEQ:3};", None, "character ';' at position 8"),
            ("A B{SEQ:3}", None, "character ' ' at position 2"),
            ("<{SEQ:3}", None, "character '<' at position 1"),
            ("é{SEQ:3}", None, "character 'é' at position 1"),
            ("{SEQ:3", None, "'{' at position 1 is never closed"),
            ("{year{SEQ:3}", None, "'{' at position 1 is never closed"),
            ("{SEQ:3}}", None, "'}' at position 8 has no opening '{'"),
            ("{}{SEQ:3}", None, "unknown placeholder '{}' at position 1"),
            (
                "{SEQ:2}{Year}",
                None,
                "unknown placeholder '{Year}' at position 8",
            ),
        ];
        for (src, len, want) in cases {
            let err = Template::parse(src, *len).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{src:?}: {err:?} should contain {want:?}"
            );
        }
        let long = format!("{}{{SEQ:3}}", "A".repeat(122));
        assert_eq!(long.len(), 129);
        assert_eq!(
            Template::parse(&long, None),
            Err(TemplateError::TooLong(129))
        );
        assert!(Template::parse(&long[1..], None).is_ok());
    }

    #[test]
    fn seq_with_seq_length_and_matching_width_are_accepted() {
        assert_eq!(Template::parse("{SEQ}", Some(8)).unwrap().seq_width(), 8);
        assert_eq!(Template::parse("{SEQ:8}", Some(8)).unwrap().seq_width(), 8);
    }

    #[test]
    fn every_placeholder_renders() {
        let t = Template::parse(
            "{prefix}/{year}.{yy}:{month}-{day}_{hour}#{date}-{dc}-{worker}{flag}-{SEQ:3}",
            None,
        )
        .unwrap();
        assert_eq!(
            t.render_string(&ctx(7)),
            "ORDERS/2025.25:11-21_23#20251121-3-17-007"
        );
        assert!(t.has("{hour}") && t.has("{SEQ}") && t.has("{flag}"));
        assert!(!Template::parse("{SEQ:1}", None).unwrap().has("{year}"));
        let degraded = RenderCtx {
            degraded: true,
            ..ctx(7)
        };
        assert!(t.render_string(&degraded).contains("-17D-007"));
        let plus_one_hour = RenderCtx {
            offset_s: 3600,
            ..ctx(7)
        };
        assert!(
            t.render_string(&plus_one_hour)
                .contains(":11-22_00#20251122")
        );
    }

    #[test]
    fn dc_and_worker_are_padded_to_the_layout_width() {
        let t = Template::parse("{dc}.{worker}-{SEQ:1}", None).unwrap();
        let at = |dc, worker, widths| RenderCtx {
            dc,
            worker,
            widths,
            ..ctx(5)
        };
        // 3 datacenter bits, 6 worker bits: one and two digits.
        assert_eq!(t.render_string(&at(3, 7, NodeWidths::default())), "3.07-5");
        assert_eq!(t.render_string(&at(7, 63, NodeWidths::default())), "7.63-5");
        // 10 worker bits: four digits; no datacenter bits: always `0`.
        let wide = NodeWidths::new(0, 1023);
        assert_eq!((wide.dc(), wide.worker()), (1, 4));
        assert_eq!(t.render_string(&at(0, 12, wide)), "0.0012-5");
        assert_eq!((wide.dc_max(), wide.worker_max()), (0, 1023));
    }

    #[test]
    fn a_wide_value_is_never_truncated() {
        let t = Template::parse("{SEQ:2}", None).unwrap();
        assert_eq!(t.render_string(&ctx(123_456)), "123456");
        assert_eq!(t.render_string(&ctx(u64::MAX)), u64::MAX.to_string());
        let t = Template::parse("{SEQ:20}", None).unwrap();
        assert_eq!(t.render_string(&ctx(1)), format!("{:020}", 1));
    }

    /// A template piece and how it renders for `ctx(value)`.
    fn piece() -> impl Strategy<Value = (String, String)> {
        prop_oneof![
            "[A-Za-z0-9._/:#-]{1,8}".prop_map(|s| (s.clone(), s)),
            Just(("{prefix}".to_string(), "ORDERS".to_string())),
            Just(("{year}".to_string(), "2025".to_string())),
            Just(("{date}".to_string(), "20251121".to_string())),
            Just(("{worker}".to_string(), "17".to_string())),
            Just(("{dc}".to_string(), "3".to_string())),
            Just(("{flag}".to_string(), String::new())),
        ]
    }

    /// Any template piece but the sequence placeholder.
    fn injective_piece() -> impl Strategy<Value = String> {
        prop_oneof![
            1 => "[A-Za-z0-9._/:#-]{1,4}",
            3 =>
            prop::sample::select(vec![
                "{prefix}", "{year}", "{yy}", "{month}", "{day}", "{hour}", "{date}", "{dc}",
                "{worker}", "{flag}", "D", "0", "1",
            ])
            .prop_map(String::from),
        ]
    }

    proptest! {
        #[test]
        fn valid_templates_render_as_their_pieces(
            before in proptest::collection::vec(piece(), 0..4),
            after in proptest::collection::vec(piece(), 0..4),
            width in 1u8..=20, value: u64,
        ) {
            let src: String = before.iter().map(|p| p.0.as_str())
                .chain([format!("{{SEQ:{width}}}").as_str()])
                .chain(after.iter().map(|p| p.0.as_str())).collect();
            let want: String = before.iter().map(|p| p.1.clone())
                .chain([format!("{value:0width$}", width = width as usize)])
                .chain(after.iter().map(|p| p.1.clone())).collect();
            let t = Template::parse(&src, None).unwrap();
            prop_assert_eq!(t.render_string(&ctx(value)), want);
        }

        /// Rendering is injective (SPEC 1.3): for any accepted template, two numbers render
        /// the same string only when their value and every field the template shows are
        /// equal. Every combination of small sets of values and fields is rendered, so that
        /// near-collisions (values across a power of ten, workers 1 and 12, dates a year,
        /// month, day or hour apart, degraded or not) are tried every time.
        #[test]
        fn rendering_is_injective(
            pieces in proptest::collection::vec(injective_piece(), 0..5),
            at in 0usize..5,
            width in prop_oneof![1u8..=3, 1u8..=20],
            worker_bits in 1u32..=10,
            big in any::<u64>(),
        ) {
            let mut pieces = pieces;
            pieces.insert(at.min(pieces.len()), format!("{{SEQ:{width}}}"));
            let src = pieces.concat();
            prop_assume!(src.chars().count() <= MAX_TEMPLATE_LEN);
            let t = Template::parse(&src, None).unwrap();
            let widths = NodeWidths::new(3, (1u64 << worker_bits) - 1);
            // A date, and a year, a month, a day and an hour later.
            let dates = [1_763_767_356_500u64, 1_795_303_356_500, 1_766_445_756_500,
                1_763_853_756_500, 1_763_770_956_500];
            let values: Vec<u64> = (0..30).chain(95..106).chain(995..1006).chain([big]).collect();
            let mut by_string: std::collections::HashMap<String, Vec<u64>> = Default::default();
            for (&value, &unix_ms) in values.iter().flat_map(|v| dates.iter().map(move |d| (v, d))) {
                let civil = civil_from_unix_ms(unix_ms, 0);
                for (dc, worker, degraded) in (0..3).flat_map(|dc| {
                    [0u64, 1, 2, 7, 12, 21, 123]
                        .into_iter()
                        .flat_map(move |w| [(dc, w, false), (dc, w, true)])
                }) {
                    let worker = worker & widths.worker_max();
                    let c = RenderCtx { value, unix_ms, dc, worker, degraded, widths, ..ctx(0) };
                    let shown = |name: &str, v: u64| if t.has(name) { v } else { u64::MAX };
                    let visible = [
                        value,
                        shown("{year}", u64::from(civil.year)),
                        shown("{yy}", u64::from(civil.year % 100)),
                        shown("{month}", u64::from(civil.month)),
                        shown("{day}", u64::from(civil.day)),
                        shown("{hour}", u64::from(civil.hour)),
                        shown("{date}", u64::from(civil.year * 10_000 + u32::from(civil.month) * 100 + u32::from(civil.day))),
                        shown("{dc}", dc),
                        shown("{worker}", worker),
                        shown("{flag}", u64::from(degraded)),
                    ];
                    let before = by_string.entry(t.render_string(&c)).or_insert(visible.to_vec());
                    prop_assert_eq!(&before[..], &visible[..], "{}", src);
                }
            }
        }

        #[test]
        fn parsing_any_string_returns_without_panicking(src in "\\PC{0,40}", len in proptest::option::of(1u8..=20)) {
            let _ = Template::parse(&src, len);
        }
    }
}
