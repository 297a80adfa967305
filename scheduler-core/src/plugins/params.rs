//! Parameter errors and value parsers shared by every plugin, so a bad `parameters` entry is reported
//! the same way whichever plugin it belongs to.
//!
//! Convention for every plugin: deserialize `Params` (unknown fields are refused), call
//! `Params::validate`, then `Plugin::new(params)`. `new` never panics: given parameters that fail
//! validation it uses the plugin's defaults instead, so only the registry path reports errors.

use core::fmt;

/// A parameter value outside what the plugin accepts: which field, and what it should have been.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamError {
    /// Field name as written in the configuration (camelCase; nested fields joined with `.`).
    pub field: &'static str,
    /// What the field must hold, phrased to follow "expected".
    pub expected: &'static str,
}

impl ParamError {
    pub const fn new(field: &'static str, expected: &'static str) -> ParamError {
        ParamError { field, expected }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}", self.field, self.expected)
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
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn display_names_field_and_expectation() {
        let e = ParamError::new("threshold", "a number > 0");
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
