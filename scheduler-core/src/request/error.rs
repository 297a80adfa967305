//! Why a request body was refused, and where in the body the problem is.

use alloc::string::String;
use core::fmt::{self, Write as _};

/// A request body the gateway refuses (answered with 400). Names the place in the body (a JSON-pointer-like
/// path such as `messages[3].content`) and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// Rendered path; empty when the problem is the body as a whole.
    path: String,
    problem: Problem,
}

/// What is wrong at the error's path.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The body is not JSON: a syntax error, truncated input, trailing characters or bad UTF-8.
    NotJson { line: usize, column: usize, detail: String },
    /// A required field is absent (or `null`).
    Missing,
    /// The value has the wrong type or an unacceptable value.
    Unexpected { expected: &'static str, found: Found },
    /// A field the gateway reads appears twice in one object. Refused rather than guessed, because JSON
    /// parsers disagree on which copy wins and the gateway must route on the same value the server reads.
    Duplicate,
}

/// What was found instead of the expected value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Null,
    Boolean,
    Number,
    NegativeNumber,
    FractionalNumber,
    LargeNumber,
    String,
    EmptyString,
    Array,
    EmptyArray,
    Object,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Found::Null => "null",
            Found::Boolean => "a boolean",
            Found::Number => "a number",
            Found::NegativeNumber => "a negative number",
            Found::FractionalNumber => "a fractional number",
            Found::LargeNumber => "a number out of range",
            Found::String => "a string",
            Found::EmptyString => "an empty string",
            Found::Array => "an array",
            Found::EmptyArray => "an empty array",
            Found::Object => "an object",
        })
    }
}

impl RequestError {
    pub(crate) fn new(path: String, problem: Problem) -> Self {
        RequestError { path, problem }
    }

    /// A body that is not JSON (or not JSON serde_json would decode), at serde_json's line and column.
    pub(crate) fn not_json(line: usize, column: usize, detail: &str) -> Self {
        let problem = Problem::NotJson { line, column, detail: String::from(detail) };
        RequestError { path: String::new(), problem }
    }

    /// Maps a `serde_json` error that is not ours (syntax, truncation, bad UTF-8) to a body-level error.
    pub(crate) fn from_json(err: &serde_json::Error) -> Self {
        let (line, column) = (err.line(), err.column());
        let mut detail = String::new();
        let _ = write!(detail, "{err}");
        // serde_json appends the location itself; we print it in our own place.
        let suffix_len = {
            let mut suffix = String::new();
            let _ = write!(suffix, " at line {line} column {column}");
            if detail.ends_with(suffix.as_str()) {
                suffix.len()
            } else {
                0
            }
        };
        detail.truncate(detail.len().saturating_sub(suffix_len));
        RequestError { path: String::new(), problem: Problem::NotJson { line, column, detail } }
    }

    /// The place in the body, e.g. `messages[3].content`; `body` when the body as a whole is wrong.
    pub fn path(&self) -> &str {
        if self.path.is_empty() {
            "body"
        } else {
            &self.path
        }
    }

    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// The OpenAI error `param`: the offending field's path, `None` for body-level problems.
    pub fn param(&self) -> Option<&str> {
        if self.path.is_empty() {
            None
        } else {
            Some(&self.path)
        }
    }

    /// The OpenAI error `code`: `invalid_json`, `missing_required_parameter`, `invalid_type` or
    /// `duplicate_parameter`.
    pub fn code(&self) -> &'static str {
        match self.problem {
            Problem::NotJson { .. } => "invalid_json",
            Problem::Missing => "missing_required_parameter",
            Problem::Unexpected { .. } => "invalid_type",
            Problem::Duplicate => "duplicate_parameter",
        }
    }

    /// The human-readable message, e.g. `messages[3].content: expected a string or an array, found a number`.
    pub fn message(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "{self}");
        out
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::NotJson { line, column, detail } => {
                write!(f, "{}: not valid JSON at line {line} column {column}: {detail}", self.path())
            }
            Problem::Missing => write!(f, "{}: missing", self.path()),
            Problem::Unexpected { expected, found } => {
                write!(f, "{}: expected {expected}, found {found}", self.path())
            }
            Problem::Duplicate => write!(f, "{}: duplicate field", self.path()),
        }
    }
}

/// One step of a path: an object key or an array index.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Seg<'k> {
    Key(&'k str),
    Index(usize),
}

/// A path built on the stack while descending into the body; rendered to a string only on error, so a
/// valid request pays nothing for located errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Path<'p> {
    parent: Option<&'p Path<'p>>,
    seg: Option<Seg<'p>>,
}

impl<'p> Path<'p> {
    /// The body itself.
    pub(crate) const ROOT: Path<'static> = Path { parent: None, seg: None };

    pub(crate) fn key<'c>(&'c self, key: &'c str) -> Path<'c>
    where
        'p: 'c,
    {
        Path { parent: Some(self), seg: Some(Seg::Key(key)) }
    }

    pub(crate) fn index<'c>(&'c self, index: usize) -> Path<'c>
    where
        'p: 'c,
    {
        Path { parent: Some(self), seg: Some(Seg::Index(index)) }
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        if let Some(parent) = self.parent {
            parent.render_into(out);
        }
        match self.seg {
            Some(Seg::Key(key)) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Some(Seg::Index(index)) => {
                let _ = write!(out, "[{index}]");
            }
            None => {}
        }
    }

    pub(crate) fn error(&self, problem: Problem) -> RequestError {
        RequestError::new(self.render(), problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_javascript_accessors() {
        let messages = Path::ROOT.key("messages");
        let third = messages.index(3);
        let content = third.key("content");
        let part = content.index(0);
        assert_eq!(part.key("image_url").render(), "messages[3].content[0].image_url");
        assert_eq!(Path::ROOT.render(), "");
    }

    #[test]
    fn body_level_errors_have_no_param() {
        let err = Path::ROOT.error(Problem::Unexpected { expected: "a JSON object", found: Found::Array });
        assert_eq!(err.param(), None);
        assert_eq!(err.message(), "body: expected a JSON object, found an array");
        let field = Path::ROOT.key("max_tokens");
        let err = field
            .error(Problem::Unexpected { expected: "a non-negative integer", found: Found::NegativeNumber });
        assert_eq!(err.param(), Some("max_tokens"));
        assert_eq!(err.code(), "invalid_type");
        assert_eq!(err.message(), "max_tokens: expected a non-negative integer, found a negative number");
    }
}
