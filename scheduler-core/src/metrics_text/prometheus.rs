//! Prometheus text exposition (format 0.0.4) as model servers emit it, read line by line without copying.
//! Strict parsers reject vLLM's `:` names or fail a whole scrape on one odd line; this one skips and counts.
//!
//! Accepted per line (surrounding blanks and a trailing `\r` ignored):
//! `name [{label="value",...[,]}] value [timestamp_ms] [# exemplar…]`, `# …` comments, blank lines.
//! Names may contain `:`. Label values may contain anything but a bare newline; `\\`, `\"` and `\n` are
//! unescaped, any other backslash pair is kept as written (lenient: one odd label should not cost a scrape).

use alloc::borrow::Cow;
use alloc::string::String;

/// One sample line. Borrows from the scraped text.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    /// Metric name as written, including suffixes such as `_bucket` or `_total`.
    pub name: &'a str,
    pub labels: Labels<'a>,
    /// `NaN`, `+Inf` and `-Inf` are kept as the IEEE values.
    pub value: f64,
    /// Milliseconds since the epoch, when the line carries one.
    pub timestamp_ms: Option<i64>,
}

/// A label set that has already been checked; iterating it cannot fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Labels<'a> {
    /// Text after `{` up to and including the closing `}`; empty when the sample has no braces.
    raw: &'a str,
}

impl<'a> Labels<'a> {
    /// `(name, value)` pairs in the order written, values unescaped (borrowed unless they had escapes).
    pub fn iter(&self) -> LabelIter<'a> {
        LabelIter { cursor: Cursor { s: self.raw, pos: 0 } }
    }

    /// Value of the first label called `name`.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Iterator over a sample's labels; see [`Labels::iter`].
#[derive(Clone, Debug)]
pub struct LabelIter<'a> {
    cursor: Cursor<'a>,
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.cursor.s.is_empty() {
            return None;
        }
        // The set was validated when the line was parsed, so an error here cannot happen; ending the
        // iteration is the safe answer if it ever did.
        match next_label(&mut self.cursor) {
            Ok(Some((name, raw))) => Some((name, unescape(raw))),
            Ok(None) | Err(_) => None,
        }
    }
}

/// What one line turned out to be.
#[derive(Clone, Debug, PartialEq)]
pub enum Line<'a> {
    Blank,
    /// `# HELP`, `# TYPE` or any other comment.
    Comment,
    Sample(Sample<'a>),
    /// Not a sample; the reason says what was expected.
    Malformed(&'static str),
}

/// Classifies and parses one line (without its `\n`; a trailing `\r` is fine).
pub fn parse_line(line: &str) -> Line<'_> {
    let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
    if line.is_empty() {
        Line::Blank
    } else if line.starts_with('#') {
        Line::Comment
    } else {
        match parse_sample(line) {
            Ok(sample) => Line::Sample(sample),
            Err(reason) => Line::Malformed(reason),
        }
    }
}

/// Counts kept while iterating a scrape, so a caller can report what was skipped and where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Lines looked at so far (1-based number of the current line).
    pub lines: usize,
    pub samples: usize,
    pub comments: usize,
    pub blank: usize,
    pub malformed: usize,
    /// Line number and reason of the first malformed line.
    pub first_malformed: Option<(usize, &'static str)>,
}

/// Samples of a whole scrape, skipping (and counting) comments, blank and malformed lines.
#[derive(Clone, Debug)]
pub struct Samples<'a> {
    lines: core::slice::Split<'a, u8, fn(&u8) -> bool>,
    stats: ParseStats,
}

fn is_newline(b: &u8) -> bool {
    *b == b'\n'
}

/// Iterates the samples of `text`.
pub fn samples(text: &str) -> Samples<'_> {
    samples_from_bytes(text.as_bytes())
}

/// Like [`samples`] for a body that may not be valid UTF-8: a line that is not UTF-8 counts as malformed
/// instead of failing the scrape.
pub fn samples_from_bytes(body: &[u8]) -> Samples<'_> {
    Samples { lines: body.split(is_newline as fn(&u8) -> bool), stats: ParseStats::default() }
}

impl Samples<'_> {
    pub fn stats(&self) -> ParseStats {
        self.stats
    }
}

impl ParseStats {
    fn malformed(&mut self, reason: &'static str) {
        self.malformed += 1;
        if self.first_malformed.is_none() {
            self.first_malformed = Some((self.lines, reason));
        }
    }
}

impl<'a> Iterator for Samples<'a> {
    type Item = Sample<'a>;

    fn next(&mut self) -> Option<Sample<'a>> {
        for bytes in self.lines.by_ref() {
            self.stats.lines += 1;
            let Ok(line) = core::str::from_utf8(bytes) else {
                self.stats.malformed("expected UTF-8 text");
                continue;
            };
            match parse_line(line) {
                Line::Sample(sample) => {
                    self.stats.samples += 1;
                    return Some(sample);
                }
                Line::Blank => self.stats.blank += 1,
                Line::Comment => self.stats.comments += 1,
                Line::Malformed(reason) => self.stats.malformed(reason),
            }
        }
        None
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn is_label_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Parses a trimmed, non-comment line.
fn parse_sample(line: &str) -> Result<Sample<'_>, &'static str> {
    let name_len = line.bytes().position(|b| !is_name_byte(b)).unwrap_or(line.len());
    let (name, rest) = line.split_at_checked(name_len).ok_or("expected a metric name")?;
    if name.is_empty() || name.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return Err("expected a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
    }
    let after_name = rest.trim_start_matches(is_blank);
    if after_name.is_empty() {
        return Err("expected a value after the metric name");
    }
    let (labels, rest) = if let Some(set) = after_name.strip_prefix('{') {
        let mut cursor = Cursor { s: set, pos: 0 };
        while next_label(&mut cursor)?.is_some() {}
        let raw = set.get(..cursor.pos).ok_or("expected '}'")?;
        let rest = set.get(cursor.pos..).ok_or("expected '}'")?;
        (Labels { raw }, rest)
    } else {
        if after_name.len() == rest.len() {
            return Err("expected '{' or a blank after the metric name");
        }
        (Labels::default(), after_name)
    };

    let mut tokens = rest.split(is_blank).filter(|t| !t.is_empty());
    let value = tokens.next().ok_or("expected a value after the metric name")?;
    let value = value.parse::<f64>().map_err(|_| "expected a number, NaN, +Inf or -Inf as the value")?;
    let timestamp_ms = match tokens.next() {
        None => None,
        Some(t) if t.starts_with('#') => return Ok(Sample { name, labels, value, timestamp_ms: None }),
        Some(t) => Some(t.parse::<i64>().map_err(|_| "expected an integer timestamp (ms) after the value")?),
    };
    match tokens.next() {
        None => Ok(Sample { name, labels, value, timestamp_ms }),
        // OpenMetrics exemplar; not ours to read.
        Some(t) if t.starts_with('#') => Ok(Sample { name, labels, value, timestamp_ms }),
        Some(_) => Err("unexpected text after the value and timestamp"),
    }
}

/// Byte position in a label set; all delimiters are ASCII so every stop is a char boundary.
#[derive(Clone, Debug)]
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8, expected: &'static str) -> Result<(), &'static str> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(expected)
        }
    }

    fn slice(&self, from: usize) -> Result<&'a str, &'static str> {
        self.s.get(from..self.pos).ok_or("expected a label set made of ASCII delimiters")
    }
}

/// Reads one `name="value"` and the `,` after it; `Ok(None)` after consuming the closing `}`.
/// The value is returned still escaped.
fn next_label<'a>(c: &mut Cursor<'a>) -> Result<Option<(&'a str, &'a str)>, &'static str> {
    c.skip_blanks();
    match c.peek() {
        None => return Err("expected '}' to close the label set"),
        Some(b'}') => {
            c.pos += 1;
            return Ok(None);
        }
        Some(_) => {}
    }
    let start = c.pos;
    while c.peek().is_some_and(is_label_name_byte) {
        c.pos += 1;
    }
    let name = c.slice(start)?;
    if name.is_empty() || name.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return Err("expected a label name or '}'");
    }
    c.skip_blanks();
    c.eat(b'=', "expected '=' after the label name")?;
    c.skip_blanks();
    c.eat(b'"', "expected '\"' to open the label value")?;
    let start = c.pos;
    loop {
        match c.peek() {
            None => return Err("expected '\"' to close the label value"),
            Some(b'"') => break,
            Some(b'\\') => {
                if c.s.as_bytes().get(c.pos + 1).is_none() {
                    return Err("expected '\"' to close the label value");
                }
                c.pos += 2;
            }
            Some(_) => c.pos += 1,
        }
    }
    let raw = c.slice(start)?;
    c.pos += 1;
    c.skip_blanks();
    match c.peek() {
        Some(b',') => c.pos += 1,
        Some(b'}') => {}
        _ => return Err("expected ',' or '}' after the label value"),
    }
    Ok(Some((name, raw)))
}

/// Undoes the exposition format's escapes; borrows when there are none.
fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn sample(line: &str) -> Sample<'_> {
        match parse_line(line) {
            Line::Sample(s) => s,
            other => panic!("expected a sample from {line:?}, got {other:?}"),
        }
    }

    fn labels<'a>(s: &Sample<'a>) -> Vec<(&'a str, String)> {
        s.labels.iter().map(|(k, v)| (k, v.into_owned())).collect()
    }

    #[test]
    fn colon_names_labels_and_values() {
        let s = sample(r#"vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B"} 3.0"#);
        assert_eq!(s.name, "vllm:num_requests_waiting");
        assert_eq!(labels(&s), [("engine", "0".into()), ("model_name", "meta-llama/Llama-3.1-8B".into())]);
        assert_eq!(s.value, 3.0);
        assert_eq!(s.timestamp_ms, None);
        assert!(matches!(s.labels.get("engine"), Some(Cow::Borrowed("0"))));
        assert_eq!(s.labels.get("absent"), None);
    }

    #[test]
    fn special_values_and_timestamps() {
        assert!(sample("a NaN").value.is_nan());
        assert_eq!(sample("a +Inf").value, f64::INFINITY);
        assert_eq!(sample("a -Inf").value, f64::NEG_INFINITY);
        assert_eq!(sample("a 1.7e9").value, 1.7e9);
        assert_eq!(sample("a -0.5").value, -0.5);
        let s = sample("a{b=\"c\"} 2 1712345678901");
        assert_eq!((s.value, s.timestamp_ms), (2.0, Some(1_712_345_678_901)));
        assert_eq!(sample("a 2 -5").timestamp_ms, Some(-5));
        // OpenMetrics exemplar after the value is ignored, not a failure.
        assert_eq!(sample(r#"a_bucket{le="1"} 4 # {trace_id="x"} 0.5"#).value, 4.0);
    }

    #[test]
    fn label_values_with_delimiters_and_escapes() {
        let s = sample(r#"m{a="x}y,z=w",b="say \"hi\"\n",c="back\\slash",d="odd\q"} 1"#);
        assert_eq!(
            labels(&s),
            [
                ("a", "x}y,z=w".into()),
                ("b", "say \"hi\"\n".into()),
                ("c", "back\\slash".into()),
                ("d", "odd\\q".into()),
            ]
        );
        assert!(matches!(s.labels.get("b"), Some(Cow::Owned(_))));
    }

    #[test]
    fn trailing_comma_blanks_empty_sets_and_crlf() {
        let s = sample("m{a=\"1\",b=\"2\",} 5\r");
        assert_eq!(labels(&s), [("a", "1".into()), ("b", "2".into())]);
        assert_eq!(s.value, 5.0);
        let s = sample("  m { a = \"1\" , }\t7  ");
        assert_eq!((labels(&s), s.value), (alloc::vec![("a", "1".into())], 7.0));
        let s = sample("m{} 1");
        assert!(s.labels.is_empty());
        assert!(sample("m 1").labels.is_empty());
    }

    #[test]
    fn comments_and_blanks() {
        assert_eq!(parse_line("# HELP vllm:x Help text {with} \"quotes\""), Line::Comment);
        assert_eq!(parse_line("# TYPE vllm:x gauge"), Line::Comment);
        assert_eq!(parse_line("   \t\r"), Line::Blank);
        assert_eq!(parse_line(""), Line::Blank);
    }

    #[test]
    fn malformed_lines_say_what_was_expected() {
        let cases = [
            ("<html>", "metric name"),
            ("9lives 1", "metric name"),
            ("m", "value"),
            ("m{a=\"1\"}", "value"),
            ("m x", "number"),
            ("m 1 x", "timestamp"),
            ("m 1 2 3", "unexpected text"),
            ("m{a=\"1\" 1", "',' or '}'"),
            ("m{a=\"1", "close the label value"),
            ("m{a=1} 1", "open the label value"),
            ("m{a} 1", "'='"),
            ("m{=\"1\"} 1", "label name"),
            ("m{a=\"1\",", "close the label set"),
            ("m-x 1", "blank after the metric name"),
            ("m{a=\"1\\", "close the label value"),
        ];
        for (line, expected) in cases {
            match parse_line(line) {
                Line::Malformed(reason) => {
                    assert!(reason.contains(expected), "{line:?}: {reason:?} should mention {expected:?}")
                }
                other => panic!("{line:?} should be malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn iterator_counts_what_it_skips() {
        let text = "# HELP a x\n# TYPE a gauge\na 1\r\n\ngarbage here\nb{x=\"y\"} 2\n";
        let mut it = samples(text);
        let got: Vec<(&str, f64)> = it.by_ref().map(|s| (s.name, s.value)).collect();
        assert_eq!(got, [("a", 1.0), ("b", 2.0)]);
        let stats = it.stats();
        assert_eq!((stats.samples, stats.comments, stats.malformed), (2, 2, 1));
        // The text ends with '\n', so the last (empty) line counts as blank too.
        assert_eq!((stats.lines, stats.blank), (7, 2));
        assert_eq!(stats.first_malformed.map(|(line, _)| line), Some(5));
    }

    #[test]
    fn invalid_utf8_line_is_skipped_not_fatal() {
        let body = b"a 1\n\xff\xfe 2\nb 3\n";
        let mut it = samples_from_bytes(body);
        let names: Vec<&str> = it.by_ref().map(|s| s.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(it.stats().first_malformed, Some((2, "expected UTF-8 text")));
    }

    #[test]
    fn long_lines_are_linear() {
        // 200k labels on one line and a 1 MB escaped value: quadratic scanning would take minutes.
        let mut line = String::from("m{");
        for i in 0..200_000 {
            line.push_str(&alloc::format!("l{i}=\"v\","));
        }
        line.push_str("big=\"");
        for _ in 0..500_000 {
            line.push_str("\\\"");
        }
        line.push_str("\"} 1");
        let s = sample(&line);
        assert_eq!(s.labels.iter().count(), 200_001);
        assert_eq!(s.labels.get("big").map(|v| v.len()), Some(500_000));
    }

    proptest! {
        #[test]
        fn arbitrary_lines_never_panic(line in "(?s).{0,200}") {
            let _ = parse_line(&line);
            for s in samples(&line) {
                let _ = s.labels.iter().count();
            }
        }

        #[test]
        fn sample_shaped_lines_never_panic(
            line in r#"[a-z:_]{1,8}(\{([a-z_]{1,4} ?= ?"([^"\\]|\\.){0,6}" ?,?){0,4}\}?)? ?[-+0-9.eInfNa]{0,6}( [0-9]{0,4})?"#
        ) {
            if let Line::Sample(s) = parse_line(&line) {
                for (k, _) in s.labels.iter() {
                    prop_assert!(!k.is_empty());
                }
            }
        }

        #[test]
        fn escaped_values_round_trip(value in "(?s).{0,40}") {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let line = alloc::format!("m{{k=\"{escaped}\"}} 1");
            let s = sample(&line);
            prop_assert_eq!(s.labels.get("k").map(Cow::into_owned), Some(value));
        }
    }
}
