//! A config request body (`POST`/`PUT /prefix-configs/{key}`), parsed strictly into a
//! [`ConfigRequest`], then built into a [`PrefixConfig`] once its mode is known (SPEC 1.0:
//! given, else the key's earlier mode, else the template's width). Building checks what
//! depends on the mode: a sequence prefix's `reset` needs its period in the template (SPEC
//! 1.3), a snowflake prefix's `initial_seq` is a floor below the IDs issued today.

use serde::Deserialize;

use super::{Mode, PrefixConfig, PrefixError, Reset, UtcOffset};
use crate::format::{MAX_SEQ_WIDTH, Template};

/// From this sequence width on, a template asks for snowflake IDs (SPEC 1.0: 18–19
/// digits); below it, for short dense sequence numbers.
pub const SNOWFLAKE_WIDTH: u8 = 16;

/// Where a config's mode came from, for the messages that depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeSource {
    /// The request's `mode`.
    Given,
    /// The mode the key was registered with before (also before a DELETE).
    Key,
    /// The template's sequence width ([`SNOWFLAKE_WIDTH`]).
    Width,
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

fn field(msg: impl Into<String>) -> PrefixError {
    PrefixError::Field(msg.into())
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

/// A request body whose fields are each valid, its mode not settled yet.
#[derive(Clone, Debug)]
pub struct ConfigRequest {
    format: String,
    template: Template,
    initial_seq: u64,
    mode: Option<Mode>,
    reset: Reset,
    utc_offset: UtcOffset,
    strict: bool,
}

impl ConfigRequest {
    /// Parses and checks a request body, field by field, and its template.
    pub fn parse(body: &[u8]) -> Result<ConfigRequest, PrefixError> {
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
        let initial_seq = parse_initial_seq(initial_seq)?;
        let mode = match mode.as_deref() {
            None => None,
            Some("snowflake") => Some(Mode::Snowflake),
            Some("sequence") => Some(Mode::Sequence),
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
        let format = format.ok_or(PrefixError::MissingFormat)?;
        let template = Template::parse(&format, seq_length)?;
        Ok(ConfigRequest {
            format,
            template,
            initial_seq,
            mode,
            reset,
            utc_offset,
            strict: strict.unwrap_or(false),
        })
    }

    /// The mode the request names, if it does.
    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// The mode the template's sequence width asks for (SPEC 1.0).
    pub fn mode_from_width(&self) -> Mode {
        if self.template.seq_width() >= SNOWFLAKE_WIDTH {
            Mode::Snowflake
        } else {
            Mode::Sequence
        }
    }

    /// The config in `mode` (which came from `source`). `floor_below`: a snowflake
    /// prefix's `initial_seq` must be below it (the smallest ID the layout issues now).
    pub fn build(
        &self,
        mode: Mode,
        source: ModeSource,
        floor_below: u64,
    ) -> Result<(PrefixConfig, Template), PrefixError> {
        let why = match source {
            ModeSource::Given => "",
            ModeSource::Key => " (the mode this key was registered with)",
            ModeSource::Width => " (from the template's width: {SEQ:16} or wider)",
        };
        match mode {
            Mode::Snowflake => {
                let only_sequence = [
                    (self.reset != Reset::Never, "reset"),
                    (self.strict, "strict"),
                ];
                if let Some((_, name)) = only_sequence.iter().find(|(set, _)| *set) {
                    return Err(field(format!(
                        "{name} applies to mode 'sequence' only; this config has mode 'snowflake'{why}"
                    )));
                }
                if self.initial_seq >= floor_below {
                    return Err(field(format!(
                        "initial_seq of a snowflake prefix is a floor below its IDs; it must be below {floor_below}, the smallest ID issued now (got {})",
                        self.initial_seq
                    )));
                }
            }
            Mode::Sequence => {
                if let Some(missing) = period_missing(self.reset, &self.template) {
                    return Err(PrefixError::ResetNeedsPeriod {
                        reset: self.reset.as_str(),
                        missing,
                    });
                }
            }
        }
        let config = PrefixConfig {
            format: self.format.clone(),
            seq_length: self.template.seq_width(),
            initial_seq: self.initial_seq,
            mode,
            reset: self.reset,
            utc_offset: self.utc_offset,
            strict: self.strict,
        };
        Ok((config, self.template.clone()))
    }
}

fn parse_initial_seq(value: Option<serde_json::Value>) -> Result<u64, PrefixError> {
    let bad = || field("initial_seq must be an integer from 0 to 18446744073709551615");
    // A JSON number or a decimal string of digits only (IDs travel as strings).
    match value {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(serde_json::Value::Number(n)) => integral(&n)
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(bad),
        Some(serde_json::Value::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().map_err(|_| bad())
        }
        Some(_) => Err(bad()),
    }
}

/// What a sequence prefix with `reset` lacks to render its period (SPEC 1.3), as the
/// message's list of missing placeholders; `None` when the template has it. Numbers of two
/// periods then always differ, although their counters start over.
pub fn period_missing(reset: Reset, template: &Template) -> Option<String> {
    let has = |name| template.has(name);
    let year = has("{year}") || has("{yy}");
    let needed: &[(bool, &str)] = match reset {
        Reset::Never => &[],
        Reset::Yearly => &[(year, "a year ({year} or {yy})")],
        Reset::Monthly => &[
            (year, "a year ({year} or {yy})"),
            (has("{month}"), "{month}"),
        ],
        Reset::Daily => &[
            (year, "a year ({year} or {yy})"),
            (has("{month}"), "{month}"),
            (has("{day}"), "{day}"),
        ],
    };
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, n)| *n)
        .collect();
    (!has("{date}") && !missing.is_empty()).then(|| missing.join(", "))
}
