//! Prefix configs (SPEC section 3.1): the request body is parsed strictly ([`request`]),
//! checked field by field, and its template parsed, so that a bad request says exactly what
//! is wrong and changes nothing; the result is a [`PrefixConfig`].

mod request;

pub use request::{ConfigRequest, ModeSource, SNOWFLAKE_WIDTH, period_missing};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::format::{Template, TemplateError};

/// Largest accepted prefix key length.
pub const MAX_KEY_LEN: usize = 64;

/// True when `key` matches `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`.
pub fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_KEY_LEN
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Snowflake,
    Sequence,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Snowflake => "snowflake",
            Mode::Sequence => "sequence",
        }
    }
}

/// When a sequence counter starts again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reset {
    Never,
    Yearly,
    Monthly,
    Daily,
}

impl Reset {
    pub fn as_str(self) -> &'static str {
        match self {
            Reset::Never => "never",
            Reset::Yearly => "yearly",
            Reset::Monthly => "monthly",
            Reset::Daily => "daily",
        }
    }

    pub fn parse(s: &str) -> Option<Reset> {
        [Reset::Never, Reset::Yearly, Reset::Monthly, Reset::Daily]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A fixed UTC offset, written `+08:00`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UtcOffset {
    seconds: i32,
}

impl UtcOffset {
    /// Parses `±HH:MM` with an offset of at most 14 hours.
    pub fn parse(s: &str) -> Option<UtcOffset> {
        let b = s.as_bytes();
        if b.len() != 6 || b[3] != b':' {
            return None;
        }
        let sign = match b[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let digits = |x: &[u8]| -> Option<i32> {
            x.iter().try_fold(0i32, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + i32::from(c - b'0'))
            })
        };
        let (h, m) = (digits(&b[1..3])?, digits(&b[4..6])?);
        if m >= 60 || h * 60 + m > 14 * 60 {
            return None;
        }
        Some(UtcOffset {
            seconds: sign * (h * 3600 + m * 60),
        })
    }

    pub fn seconds(self) -> i32 {
        self.seconds
    }
}

impl std::fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.seconds < 0 { '-' } else { '+' };
        let abs = self.seconds.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60)
    }
}

impl Serialize for UtcOffset {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UtcOffset::parse(&s).ok_or_else(|| serde::de::Error::custom("bad utc_offset"))
    }
}

/// A validated prefix config: the form kept in the store and shown by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixConfig {
    pub format: String,
    /// The sequence width: from `seq_length` or the template's `{SEQ:N}`.
    pub seq_length: u8,
    pub initial_seq: u64,
    pub mode: Mode,
    pub reset: Reset,
    pub utc_offset: UtcOffset,
    pub strict: bool,
}

/// Why a prefix config request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// `INVALID_FORMAT`
    #[error("{0}")]
    Format(#[from] TemplateError),
    /// `INVALID_FORMAT`: no template at all.
    #[error("format is required")]
    MissingFormat,
    /// `INVALID_FORMAT`: a sequence prefix with `reset` whose template does not show its
    /// period, so that two periods could render the same number.
    #[error(
        "reset '{reset}' needs the period in the format, so that numbers of different periods differ: add {{date}}, or {missing}"
    )]
    ResetNeedsPeriod {
        reset: &'static str,
        missing: String,
    },
    /// `INVALID_CONFIG`
    #[error("{0}")]
    Field(String),
}

impl PrefixConfig {
    /// Parses and checks a request body with no history behind it: the mode as given, else
    /// from the template's width, and no floor for `initial_seq` (tests and tools; the
    /// service builds a [`ConfigRequest`] with the key's record and the layout).
    pub fn from_request(body: &[u8]) -> Result<(PrefixConfig, Template), PrefixError> {
        let request = ConfigRequest::parse(body)?;
        let (mode, source) = match request.mode() {
            Some(m) => (m, ModeSource::Given),
            None => (request.mode_from_width(), ModeSource::Width),
        };
        request.build(mode, source, u64::MAX)
    }

    /// Parses the template of a config that was valid when stored.
    pub fn template(&self) -> Result<Template, TemplateError> {
        Template::parse(&self.format, Some(self.seq_length))
    }

    /// The config as JSON for the API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The config as JSON for logs: `initial_seq` masked.
    pub fn to_log_json(&self) -> serde_json::Value {
        let mut v = self.to_json();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("initial_seq".into(), "****".into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<PrefixConfig, PrefixError> {
        PrefixConfig::from_request(body.as_bytes()).map(|(c, _)| c)
    }

    #[test]
    fn keys_follow_the_pattern() {
        for ok in ["A", "ORDERS", "a.b-c_d", "9", &"x".repeat(64)] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in [
            "",
            "-A",
            "_A",
            ".A",
            "A B",
            "A/B",
            "'; DROP TABLE users;--",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    /// JSON has one number type: `6.0` is the integer 6 (JSON Schema's `integer` says so,
    /// and schemathesis sent one), accepted wherever an integer is; a float is taken only
    /// where it is exact.
    #[test]
    fn whole_numbers_written_as_floats_are_integers() {
        let c = parse(r#"{"format":"A{SEQ}","seq_length":6.0}"#).unwrap();
        assert_eq!(c.seq_length, 6);
        let c = parse(r#"{"format":"A{SEQ:3}","mode":"sequence","initialSeq":1000.0}"#).unwrap();
        assert_eq!(c.initial_seq, 1000);
        let c = parse(
            r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":"18446744073709551615"}"#,
        )
        .unwrap();
        assert_eq!(c.initial_seq, u64::MAX);
        // Above 2^53 a float is not exact: a string (or a plain integer) is needed.
        assert!(parse(r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":1e17}"#).is_err());
        let c =
            parse(r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":100000000000000000}"#)
                .unwrap();
        assert_eq!(c.initial_seq, 100_000_000_000_000_000);
    }

    #[test]
    fn defaults_and_aliases() {
        let c = parse(r#"{"format":"ORD-{SEQ:6}"}"#).unwrap();
        assert_eq!(
            c,
            PrefixConfig {
                format: "ORD-{SEQ:6}".into(),
                seq_length: 6,
                initial_seq: 0,
                mode: Mode::Sequence,
                reset: Reset::Never,
                utc_offset: UtcOffset::default(),
                strict: false,
            }
        );
        let c = parse(
            r#"{"format":"INV-{yy}{month}-{SEQ}","seqLength":8,"initialSeq":"1000","mode":"sequence","utcOffset":"+08:00","reset":"monthly","strict":true}"#,
        )
        .unwrap();
        assert_eq!(
            (
                c.seq_length,
                c.initial_seq,
                c.utc_offset.seconds(),
                c.strict
            ),
            (8, 1000, 8 * 3600, true)
        );
        assert_eq!(c.reset, Reset::Monthly);
        let back: PrefixConfig = serde_json::from_value(c.to_json()).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.to_log_json()["initial_seq"], "****");
        assert_eq!(c.to_json()["utc_offset"], "+08:00");
    }

    /// SPEC 1.0: without `mode`, up to 15 digits is a sequence, from 16 on snowflake IDs;
    /// a given mode wins.
    #[test]
    fn the_mode_follows_the_width_unless_given() {
        for (body, mode) in [
            (r#"{"format":"TEST-{SEQ:4}"}"#, Mode::Sequence),
            (r#"{"format":"{SEQ:15}"}"#, Mode::Sequence),
            (r#"{"format":"{SEQ}","seq_length":15}"#, Mode::Sequence),
            (r#"{"format":"{SEQ:16}"}"#, Mode::Snowflake),
            (r#"{"format":"O-{SEQ:19}"}"#, Mode::Snowflake),
            (
                r#"{"format":"T-{SEQ:4}","mode":"snowflake"}"#,
                Mode::Snowflake,
            ),
            (
                r#"{"format":"T-{SEQ:19}","mode":"sequence"}"#,
                Mode::Sequence,
            ),
            // The seed's own body: a sequence whose first number is 2.
            (
                r#"{"format":"{prefix}-{year}-{SEQ:6}","seqLength":6,"initialSeq":1}"#,
                Mode::Sequence,
            ),
        ] {
            assert_eq!(parse(body).unwrap().mode, mode, "{body}");
        }
        let request = ConfigRequest::parse(br#"{"format":"A{SEQ:19}","strict":true}"#).unwrap();
        assert_eq!(request.mode(), None);
        let err = request
            .build(Mode::Snowflake, ModeSource::Width, u64::MAX)
            .unwrap_err();
        assert!(
            err.to_string().contains("from the template's width"),
            "{err}"
        );
        let err = request
            .build(Mode::Snowflake, ModeSource::Key, u64::MAX)
            .unwrap_err();
        assert!(err.to_string().contains("registered with"), "{err}");
        assert!(request.build(Mode::Sequence, ModeSource::Key, 0).is_ok());
    }

    /// SPEC 1.3: a counter that starts over each period needs the period in the number.
    #[test]
    fn a_reset_needs_its_period_in_the_template() {
        let ok = [
            ("yearly", "{year}-{SEQ:4}"),
            ("yearly", "{yy}{SEQ:4}"),
            ("yearly", "{date}{SEQ:4}"),
            ("monthly", "{year}{month}{SEQ:4}"),
            ("monthly", "{yy}/{month}/{SEQ:4}"),
            ("monthly", "{date}-{SEQ:4}"),
            ("daily", "{date}-{SEQ:4}"),
            ("daily", "{year}{month}{day}-{SEQ:4}"),
            ("never", "{SEQ:4}"),
        ];
        for (reset, format) in ok {
            let body = format!(r#"{{"format":"{format}","reset":"{reset}"}}"#);
            assert!(parse(&body).is_ok(), "{body}");
        }
        let refused = [
            ("yearly", "INV-{SEQ:4}", "a year ({year} or {yy})"),
            ("monthly", "{year}-{SEQ:4}", "{month}"),
            ("monthly", "{month}-{SEQ:4}", "a year ({year} or {yy})"),
            // Finding 3: daily with year and month renders the same number every day.
            ("daily", "INV-{year}{month}-{SEQ:4}", "{day}"),
            ("daily", "{day}-{SEQ:4}", "a year ({year} or {yy}), {month}"),
        ];
        for (reset, format, missing) in refused {
            let body = format!(r#"{{"format":"{format}","reset":"{reset}"}}"#);
            match parse(&body) {
                Err(e @ PrefixError::ResetNeedsPeriod { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.ends_with(&format!("or {missing}")), "{body}: {msg}");
                    assert!(msg.contains(&format!("reset '{reset}'")), "{msg}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    /// SPEC 1.3: on a snowflake prefix `initial_seq` is a floor, which must lie below the
    /// IDs issued now.
    #[test]
    fn a_snowflake_floor_must_lie_below_the_ids_of_today() {
        let request = ConfigRequest::parse(
            br#"{"format":"O-{SEQ:3}","mode":"snowflake","initial_seq":"500"}"#,
        )
        .unwrap();
        let (c, _) = request
            .build(Mode::Snowflake, ModeSource::Given, 501)
            .unwrap();
        assert_eq!((c.mode, c.initial_seq), (Mode::Snowflake, 500));
        let err = request
            .build(Mode::Snowflake, ModeSource::Given, 500)
            .unwrap_err();
        assert!(
            matches!(err, PrefixError::Field(ref m) if m.contains("below 500")),
            "{err}"
        );
    }

    #[test]
    fn bad_fields_are_invalid_config_and_bad_templates_invalid_format() {
        let field_errors = [
            (
                r#"{"format":"A{SEQ:3}","seq_length":-5}"#,
                "seq_length must be from 1 to 20 (got -5)",
            ),
            (r#"{"format":"A{SEQ}","seq_length":21}"#, "got 21"),
            (r#"{"format":"A{SEQ:3}","seq_length":"3"}"#, "invalid type"),
            (
                r#"{"format":"A{SEQ:3}","colour":"red"}"#,
                "unknown field `colour`",
            ),
            (r#"{"format":"A{SEQ:3}","mode":"random"}"#, "mode must be"),
            (
                r#"{"format":"A{SEQ:3}","mode":"sequence","reset":"hourly"}"#,
                "reset must be",
            ),
            (
                r#"{"format":"A{SEQ:3}","utc_offset":"+15:00"}"#,
                "utc_offset",
            ),
            (
                r#"{"format":"A{SEQ:3}","utc_offset":"08:00"}"#,
                "utc_offset",
            ),
            (
                r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":-1}"#,
                "initial_seq must be",
            ),
            (
                r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":1.5}"#,
                "initial_seq must be",
            ),
            (
                r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":"x"}"#,
                "initial_seq must be",
            ),
            (
                r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":"+5"}"#,
                "initial_seq must be",
            ),
            (
                r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":1e30}"#,
                "initial_seq must be",
            ),
            (
                r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":true}"#,
                "initial_seq must be",
            ),
            (r#"{"format":"A{SEQ}","seq_length":2.5}"#, "got 2.5"),
            (
                r#"{"format":"A{SEQ:3}","mode":"snowflake","strict":true}"#,
                "strict applies to mode 'sequence' only",
            ),
            (
                r#"{"format":"{date}{SEQ:3}","mode":"snowflake","reset":"daily"}"#,
                "reset applies",
            ),
            (
                r#"{"format":"{date}{SEQ:19}","reset":"daily"}"#,
                "reset applies",
            ),
            (r#"{"format":"A{SEQ:3}""#, "invalid prefix config"),
            ("", "invalid prefix config"),
            ("[]", "invalid prefix config"),
        ];
        for (body, want) in field_errors {
            match parse(body) {
                Err(PrefixError::Field(msg)) => assert!(msg.contains(want), "{body}: {msg}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert_eq!(
            parse(r#"{"mode":"sequence"}"#),
            Err(PrefixError::MissingFormat)
        );
        // Only an object is a config: serde would read an array as the fields in order.
        let not_objects = [
            (
                r#"["A-{SEQ:4}",null,5,"sequence",null,null,true]"#,
                "not an array",
            ),
            (r#" ["A-{SEQ:4}"]"#, "not an array"),
            (r#""A-{SEQ:4}""#, "not a string"),
            ("5", "not a number"),
            ("true", "not a boolean"),
            ("null", "not null"),
            ("[1,", "EOF while parsing"),
        ];
        for (body, want) in not_objects {
            match parse(body) {
                Err(PrefixError::Field(msg)) => {
                    assert!(msg.contains(want), "{body}: {msg}");
                    assert!(!msg.contains("RawConfig"), "{body}: {msg}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert_eq!(
            parse(r#"{"format":"INVALID"}"#).unwrap_err().to_string(),
            "Missing {SEQ} tag"
        );
        assert!(matches!(
            parse(r#"{"format":"'; DROP TABLE users;--{SEQ:3}"}"#),
            Err(PrefixError::Format(TemplateError::BadChar {
                ch: '\'',
                pos: 1
            }))
        ));
    }

    #[test]
    fn offsets_parse_and_print() {
        for (s, secs) in [("+00:00", 0), ("-05:30", -19_800), ("+14:00", 50_400)] {
            let o = UtcOffset::parse(s).unwrap();
            assert_eq!(o.seconds(), secs);
            assert_eq!(o.to_string(), s);
        }
        for bad in ["+14:01", "+1:00", "0800", "+08:60", "+0a:00", "Z"] {
            assert_eq!(UtcOffset::parse(bad), None, "{bad}");
        }
    }
}
