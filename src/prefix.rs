//! Prefix configs (SPEC section 3.1): the request body is parsed strictly into a
//! [`PrefixConfig`], checked field by field, and its template parsed, so that a bad request
//! says exactly what is wrong and changes nothing.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::format::{MAX_SEQ_WIDTH, Template, TemplateError};

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
    /// `INVALID_CONFIG`
    #[error("{0}")]
    Field(String),
}

/// The integer a JSON number is, also when it is written with a zero fraction (`6.0`):
/// JSON has one number type, JSON Schema's `integer` counts `6.0` in, and some encoders
/// write whole floats that way. A float is taken only where it is exact (up to 2^53).
fn integral(n: &serde_json::Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.into());
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i128)
}

/// The request body as sent. Numeric fields are wide so that out-of-range values get a
/// message of their own rather than a serde type error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
struct RawConfig {
    format: Option<String>,
    #[serde(alias = "seqLength")]
    seq_length: Option<serde_json::Number>,
    #[serde(alias = "initialSeq")]
    initial_seq: Option<serde_json::Value>,
    mode: Option<String>,
    reset: Option<String>,
    #[serde(alias = "utcOffset")]
    utc_offset: Option<String>,
    strict: Option<bool>,
}

/// Why a body that does not start with `{` is not a config: what JSON it is instead, or
/// why it is not JSON.
fn not_an_object(body: &[u8]) -> String {
    use serde_json::Value;
    let kind = match serde_json::from_slice::<Value>(body) {
        Err(e) => return syntax(&e),
        Ok(Value::Array(_)) => "an array",
        Ok(Value::String(_)) => "a string",
        Ok(Value::Number(_)) => "a number",
        Ok(Value::Bool(_)) => "a boolean",
        Ok(Value::Null) => "null",
        // Not reached: the caller checked that the body does not start with `{`.
        Ok(Value::Object(_)) => "an object",
    };
    format!("invalid prefix config: the body must be a JSON object, not {kind}")
}

/// A JSON error for people: the body is one line, so only its column counts.
fn syntax(e: &serde_json::Error) -> String {
    format!(
        "invalid prefix config: {}",
        e.to_string().replace(" at line 1 column", " at column")
    )
}

fn field(msg: impl Into<String>) -> PrefixError {
    PrefixError::Field(msg.into())
}

impl PrefixConfig {
    /// Parses and checks a request body; returns the config and its parsed template.
    pub fn from_request(body: &[u8]) -> Result<(PrefixConfig, Template), PrefixError> {
        // serde reads a struct from a JSON array too (its fields in order): only an object
        // is a config.
        if body.trim_ascii_start().first().is_some_and(|&b| b != b'{') {
            return Err(field(not_an_object(body)));
        }
        let raw: RawConfig = serde_json::from_slice(body).map_err(|e| field(syntax(&e)))?;
        let RawConfig {
            format,
            seq_length,
            initial_seq,
            mode,
            reset,
            utc_offset,
            strict,
        } = raw;
        let seq_length = seq_length
            .map(|n| {
                integral(&n)
                    .and_then(|i| u8::try_from(i).ok())
                    .filter(|n| (1..=MAX_SEQ_WIDTH).contains(n))
                    .ok_or_else(|| field(format!("seq_length must be from 1 to 20 (got {n})")))
            })
            .transpose()?;
        // A JSON number or a decimal string of digits (IDs travel as strings).
        let initial_seq = match initial_seq {
            None | Some(serde_json::Value::Null) => Some(0),
            Some(serde_json::Value::Number(n)) => integral(&n).and_then(|i| u64::try_from(i).ok()),
            Some(serde_json::Value::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<u64>().ok()
            }
            Some(_) => None,
        }
        .ok_or_else(|| field("initial_seq must be an integer from 0 to 18446744073709551615"))?;
        let mode = match mode.as_deref() {
            None | Some("snowflake") => Mode::Snowflake,
            Some("sequence") => Mode::Sequence,
            Some(other) => {
                return Err(field(format!(
                    "mode must be 'snowflake' or 'sequence' (got '{other}')"
                )));
            }
        };
        let reset = match reset.as_deref() {
            None => Reset::Never,
            Some(name) => Reset::parse(name).ok_or_else(|| {
                field(format!(
                    "reset must be 'never', 'yearly', 'monthly' or 'daily' (got '{name}')"
                ))
            })?,
        };
        let utc_offset = match utc_offset.as_deref() {
            None => UtcOffset::default(),
            Some(s) => UtcOffset::parse(s).ok_or_else(|| {
                field(format!(
                    "utc_offset must look like +08:00, at most 14 hours (got '{s}')"
                ))
            })?,
        };
        let strict = strict.unwrap_or(false);
        if mode == Mode::Snowflake {
            let only_sequence = [
                (reset != Reset::Never, "reset"),
                (strict, "strict"),
                (initial_seq != 0, "initial_seq"),
            ];
            if let Some((_, name)) = only_sequence.iter().find(|(set, _)| *set) {
                return Err(field(format!(
                    "{name} applies to mode 'sequence' only; this config has mode 'snowflake'"
                )));
            }
        }
        let format = format.ok_or(PrefixError::MissingFormat)?;
        let template = Template::parse(&format, seq_length)?;
        let config = PrefixConfig {
            format,
            seq_length: template.seq_width(),
            initial_seq,
            mode,
            reset,
            utc_offset,
            strict,
        };
        Ok((config, template))
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
                mode: Mode::Snowflake,
                reset: Reset::Never,
                utc_offset: UtcOffset::default(),
                strict: false,
            }
        );
        let c = parse(
            r#"{"format":"INV-{SEQ}","seqLength":8,"initialSeq":"1000","mode":"sequence","utcOffset":"+08:00","reset":"monthly","strict":true}"#,
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
                r#"{"format":"A{SEQ:3}","initial_seq":5}"#,
                "initial_seq applies to mode 'sequence' only",
            ),
            (r#"{"format":"A{SEQ:3}","strict":true}"#, "strict applies"),
            (r#"{"format":"A{SEQ:3}","reset":"daily"}"#, "reset applies"),
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
