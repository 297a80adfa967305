//! Turning a JSON object (a plugin's `parameters`, or one of our own configuration sections) into a
//! typed struct, with errors that name the field.
//!
//! serde reports *what* was wrong but not *where*; this module finds the offending key so the operator
//! sees `plugins[2].parameters.threshold: expected a number in [0, 1], got "high"`. It sits in `config`,
//! below the plugins and the scheduler that use it.

use super::ConfigError;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::de::{DeserializeOwned, Deserializer, Error as _, Unexpected, Visitor};
use serde_json::{Map, Value};

/// A bad `parameters` value. `field` is the key inside `parameters` (empty: the whole object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    pub field: String,
    pub expected: String,
    pub got: Option<String>,
}

impl ParamError {
    pub fn new(field: impl Into<String>, expected: impl Into<String>, got: Option<String>) -> ParamError {
        ParamError { field: field.into(), expected: expected.into(), got }
    }

    /// A value that parsed but is out of range (checked when a plugin is built from its parameters).
    pub fn invalid(field: &str, expected: &str) -> ParamError {
        ParamError::new(field, expected, None)
    }

    /// The configuration error for this parameter of the object at `path` (e.g. `plugins[2].parameters`
    /// or `collector`): `path.field`, or `path` itself when the whole object is wrong.
    pub fn at(self, path: &str) -> ConfigError {
        let path = if self.field.is_empty() { String::from(path) } else { format!("{path}.{}", self.field) };
        ConfigError { path, expected: self.expected, got: self.got }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "expected {}", self.expected)?;
        if let Some(got) = &self.got {
            write!(f, ", got {got}")?;
        }
        Ok(())
    }
}

/// Parameters of a plugin that takes none: any key is an error.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Parameters of an llm-d plugin type whose llm-d factory never reads them: any object is accepted
/// (its keys are kept for the warning [`BuildContext::ignore_params`] gives). Our own plugins that take
/// none use [`NoParams`], where a key is an error.
///
/// [`BuildContext::ignore_params`]: crate::scheduling::BuildContext::ignore_params
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoredParams {
    /// The keys given, in order.
    pub keys: Vec<String>,
}

impl<'de> serde::Deserialize<'de> for IgnoredParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IgnoredParams, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        Ok(IgnoredParams { keys: map.into_iter().map(|(k, _)| k).collect() })
    }
}

/// Short JSON rendering of a value for error messages (long values are cut).
pub fn json_repr(v: &Value) -> String {
    let mut s = serde_json::to_string(v).unwrap_or_default();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Deserializes `parameters` (absent/`null` means "all defaults") into `T`.
///
/// `T` should be `#[serde(default, deny_unknown_fields, rename_all = "camelCase")]`.
pub fn parse_params<T: DeserializeOwned>(value: &Value) -> Result<T, ParamError> {
    let empty = Value::Object(Map::new());
    let value = match value {
        Value::Null => &empty,
        Value::Object(_) => value,
        other => {
            return Err(ParamError::new("", "an object of parameters", Some(json_repr(other))));
        }
    };
    match T::deserialize(value) {
        Ok(t) => Ok(t),
        Err(e) => Err(locate::<T>(value, &e.to_string())),
    }
}

fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

fn locate<T: DeserializeOwned>(value: &Value, message: &str) -> ParamError {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let names = backticked(rest);
        let field = names.first().copied().unwrap_or_default();
        let known = names.get(1..).unwrap_or_default();
        let expected = if known.is_empty() {
            String::from("no parameters (this plugin takes none)")
        } else {
            format!("one of the known parameters: {}", known.join(", "))
        };
        return ParamError::new(field, expected, Some(String::from("an unknown parameter")));
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        let field = backticked(rest).first().copied().unwrap_or_default();
        return ParamError::new(field, "a value (this parameter is required)", Some(String::from("nothing")));
    }
    // Type and range errors do not say which key failed: try each key alone to find it.
    if let Value::Object(map) = value {
        for (key, v) in map {
            let mut single = Map::new();
            single.insert(key.clone(), v.clone());
            if let Err(e) = T::deserialize(&Value::Object(single)) {
                let msg = e.to_string();
                if msg.starts_with("missing field ") {
                    continue;
                }
                let expected = msg.rsplit_once(", expected ").map_or(msg.as_str(), |(_, e)| e);
                return ParamError::new(key.as_str(), expected, Some(json_repr(v)));
            }
        }
    }
    ParamError::new("", message, None)
}

struct Bounded {
    min: f64,
    max: f64,
    integer: bool,
    what: &'static str,
}

impl Visitor<'_> for Bounded {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
        // Exact for |v| < 2^63, which covers every count we accept.
        let whole = !self.integer || (v.abs() < 9.0e18 && (v as i64) as f64 == v);
        if v.is_finite() && whole && v >= self.min && v <= self.max {
            Ok(v)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
        let f = v as f64;
        if f >= self.min && f <= self.max {
            Ok(f)
        } else {
            Err(E::invalid_value(Unexpected::Unsigned(v), &self))
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
        let f = v as f64;
        if f >= self.min && f <= self.max {
            Ok(f)
        } else {
            Err(E::invalid_value(Unexpected::Signed(v), &self))
        }
    }
}

/// `#[serde(deserialize_with = "unit_interval")]`: a number in [0, 1].
pub fn unit_interval<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(Bounded { min: 0.0, max: 1.0, integer: false, what: "a number in [0, 1]" })
}

/// `#[serde(deserialize_with = "non_negative_number")]`: a finite number ≥ 0.
pub fn non_negative_number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(Bounded { min: 0.0, max: f64::MAX, integer: false, what: "a number ≥ 0" })
}

/// `#[serde(deserialize_with = "positive_count")]`: an integer ≥ 1 (counts such as `maxNumOfEndpoints`).
pub fn positive_count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = d.deserialize_any(Bounded { min: 1.0, max: 1e9, integer: true, what: "an integer ≥ 1" })?;
    usize::try_from(v as u64).map_err(|_| D::Error::custom("an integer ≥ 1"))
}

/// `#[serde(deserialize_with = "integer")]`: any integer (for values whose range the plugin's `build`
/// handles itself, e.g. llm-d's `maxNumOfEndpoints`, where ≤ 0 means the default).
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = d.deserialize_any(Bounded { min: -9.0e15, max: 9.0e15, integer: true, what: "an integer" })?;
    Ok(v as i64)
}

/// `#[serde(deserialize_with = "non_negative_count")]`: an integer ≥ 0.
pub fn non_negative_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = d.deserialize_any(Bounded { min: 0.0, max: 9.0e15, integer: true, what: "an integer ≥ 0" })?;
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields, rename_all = "camelCase")]
    struct P {
        #[serde(deserialize_with = "unit_interval")]
        threshold: f64,
        #[serde(deserialize_with = "positive_count")]
        max_num_of_endpoints: usize,
        label: String,
    }

    fn err(v: Value) -> String {
        parse_params::<P>(&v).unwrap_err().to_string()
    }

    #[test]
    fn null_means_defaults() {
        assert_eq!(parse_params::<P>(&Value::Null).unwrap(), P::default());
    }

    #[test]
    fn errors_name_the_field() {
        use serde_json::json;
        assert_eq!(err(json!({"threshold": "high"})), "threshold: expected a number in [0, 1], got \"high\"");
        assert_eq!(
            err(json!({"label": "x", "threshold": 2})),
            "threshold: expected a number in [0, 1], got 2"
        );
        assert_eq!(err(json!({"maxNumOfEndpoints": 0})), "maxNumOfEndpoints: expected an integer ≥ 1, got 0");
        assert_eq!(
            err(json!({"maxNumOfEndpoints": 1.5})),
            "maxNumOfEndpoints: expected an integer ≥ 1, got 1.5"
        );
        assert_eq!(
            err(json!({"treshold": 1})),
            "treshold: expected one of the known parameters: threshold, maxNumOfEndpoints, label, got an unknown parameter"
        );
        assert_eq!(err(json!([1])), "expected an object of parameters, got [1]");
    }
}

/// Parses a Go/Kubernetes duration string (`"200ms"`, `"1.5s"`, `"1m30s"`, `"0"`) into whole
/// milliseconds, rounding up so a positive duration never becomes zero (the scheduler clock is in ms).
///
/// Units: `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`. Signs are refused: no plugin takes a negative
/// duration. `None` on anything else, including overflow.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total_ns: u128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after_num.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after_num.len());
        let (unit, next) = after_num.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let int_value: u128 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
        total_ns = total_ns.checked_add(int_value.checked_mul(unit_ns)?)?;
        // Fractions beyond nanosecond precision cannot change the rounded-up millisecond result
        // by more than one, and 18 digits keep the denominator inside u128 with room to spare.
        let frac = frac_part.get(..frac_part.len().min(18)).unwrap_or("");
        if !frac.is_empty() {
            let numerator: u128 = frac.parse().ok()?;
            let denominator = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
            total_ns = total_ns.checked_add(numerator.checked_mul(unit_ns)?.div_ceil(denominator))?;
        }
        rest = next;
    }
    u64::try_from(total_ns.div_ceil(1_000_000)).ok()
}

#[cfg(test)]
mod duration_tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn display_names_field_and_expectation() {
        let e = ParamError::invalid("threshold", "a number > 0");
        assert_eq!(e.to_string(), "threshold: expected a number > 0");
    }

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(parse_duration_ms("200ms"), Some(200));
        assert_eq!(parse_duration_ms("1s"), Some(1000));
        assert_eq!(parse_duration_ms("1.5s"), Some(1500));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("0"), Some(0));
        assert_eq!(parse_duration_ms("0s"), Some(0));
        assert_eq!(parse_duration_ms(".5s"), Some(500));
        // Sub-millisecond durations round up rather than collapse to zero.
        assert_eq!(parse_duration_ms("500us"), Some(1));
        assert_eq!(parse_duration_ms("500µs"), Some(1));
        assert_eq!(parse_duration_ms("1ns"), Some(1));
        assert_eq!(parse_duration_ms("1000001ns"), Some(2));
    }

    #[test]
    fn malformed_durations_are_refused() {
        for bad in ["", "200", "ms", "-1s", "+1s", "1x", "1.s.", "1 s", "s1", "99999999999999999999999h"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }
}
