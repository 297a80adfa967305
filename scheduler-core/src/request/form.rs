//! Bodies that are not JSON: which reader a `content-type` selects, and a small `multipart/form-data`
//! reader (RFC 7578) that finds one text field (audio transcriptions and translations send `model` as a
//! form field).
//!
//! The reader borrows from the body and never allocates. It is bounded against hostile input: one
//! forward scan for the delimiter (a boundary has no CR or LF, so a partial match never hides another
//! candidate and the scan stays linear), at most [`MAX_PARTS`] parts, part headers of at most
//! [`MAX_PART_HEADERS`] bytes, and a field value of at most [`MAX_FIELD_BYTES`]. Anything malformed gives
//! `None`: the request is then routed on load without a model, and the model server judges the body.

use super::{ApiKind, InferenceRequest, OutputLimits};
use alloc::borrow::Cow;

/// Parts a body may have (a form with more is not read).
pub const MAX_PARTS: usize = 64;
/// Bytes of one part's header block.
pub const MAX_PART_HEADERS: usize = 4096;
/// Bytes of a field value the reader returns (a model name is far shorter).
pub const MAX_FIELD_BYTES: usize = 1024;

/// How a request body is read, from its `content-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat<'t> {
    /// `application/json`, `*+json`, or no `content-type` at all: parsed and validated, refused with 400
    /// when it is not a valid request.
    Json,
    /// `multipart/form-data` with its boundary: `model` (and `stream`) are read from the form fields.
    Form { boundary: &'t str },
    /// Anything else (including `multipart/form-data` without a usable boundary): read as JSON when it
    /// is valid JSON (clients such as `curl -d` label JSON `application/x-www-form-urlencoded`), otherwise
    /// routed on load without a model, never refused.
    Other,
}

impl<'t> BodyFormat<'t> {
    /// Classifies a `content-type` header value (media type case-insensitive, parameters allowed).
    pub fn of(content_type: Option<&'t str>) -> BodyFormat<'t> {
        let Some(value) = content_type else {
            return BodyFormat::Json;
        };
        let mut params = value.split(';');
        let media = params.next().unwrap_or_default().trim();
        if media.is_empty() {
            return BodyFormat::Json;
        }
        let json = media.eq_ignore_ascii_case("application/json")
            || media.get(media.len().saturating_sub(5)..).is_some_and(|s| s.eq_ignore_ascii_case("+json"));
        if json {
            return BodyFormat::Json;
        }
        if !media.eq_ignore_ascii_case("multipart/form-data") {
            return BodyFormat::Other;
        }
        let boundary = params.find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim().eq_ignore_ascii_case("boundary").then_some(value.trim())
        });
        let boundary = boundary.map(|b| b.strip_prefix('"').and_then(|b| b.strip_suffix('"')).unwrap_or(b));
        match boundary {
            Some(b) if valid_boundary(b) => BodyFormat::Form { boundary: b },
            _ => BodyFormat::Other,
        }
    }
}

/// RFC 2046 §5.1.1: 1 to 70 characters from a set without CR, LF or quotes, not ending in a space.
fn valid_boundary(b: &str) -> bool {
    (1..=70).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes().all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c))
}

/// A `multipart/form-data` body as a request: `None` unless it has exactly one non-empty text field
/// `model`. `stream` is true when a `stream` field says `true`. Nothing is hashed (no prefix affinity)
/// and no prompt size is estimated: the request is routed on load for its model.
pub fn parse_form<'a>(body: &'a [u8], boundary: &str) -> Option<InferenceRequest<'a>> {
    let model = form_field(body, boundary, "model")?;
    let stream = form_field(body, boundary, "stream").is_some_and(|s| s.eq_ignore_ascii_case("true"));
    Some(InferenceRequest {
        api: ApiKind::Other,
        model: Cow::Borrowed(model),
        stream,
        limits: OutputLimits::default(),
        cache_salt: None,
        user: None,
        prefix_input: Cow::Borrowed(&[]),
        prompt_bytes: 0,
    })
}

/// The value of the text field `name` (trimmed, non-empty, UTF-8, at most [`MAX_FIELD_BYTES`]); `None`
/// when it is absent, appears twice (the server's choice of copy is not ours to guess), is a file, or the
/// body is malformed or over the reader's bounds before it is found.
pub fn form_field<'a>(body: &'a [u8], boundary: &str, name: &str) -> Option<&'a str> {
    let boundary = boundary.as_bytes();
    // The first delimiter may open the body (no preamble) or follow a preamble line.
    let mut at = if body.starts_with(b"--") && body.get(2..)?.starts_with(boundary) {
        0
    } else {
        find_delimiter(body, boundary, 0)?.checked_add(2)?
    };
    let mut found: Option<&'a str> = None;
    // One more round than parts, to meet the close delimiter.
    for _ in 0..=MAX_PARTS {
        // `at` is the start of `--boundary`.
        let after = at.checked_add(2)?.checked_add(boundary.len())?;
        let rest = body.get(after..)?;
        if rest.starts_with(b"--") {
            return found; // the close delimiter
        }
        // Transport padding, then CRLF.
        let pad = rest.iter().take_while(|c| matches!(c, b' ' | b'\t')).count();
        let line_end = after.checked_add(pad)?;
        if body.get(line_end..line_end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        let headers_start = line_end.checked_add(2)?;
        let window_end = headers_start.saturating_add(MAX_PART_HEADERS).min(body.len());
        let window = body.get(headers_start..window_end)?;
        let headers_len =
            if window.starts_with(b"\r\n") { 0 } else { find(window, b"\r\n\r\n")?.checked_add(2)? };
        let headers = body.get(headers_start..headers_start.checked_add(headers_len)?)?;
        let content_start = headers_start.checked_add(headers_len)?.checked_add(2)?;
        let next = find_delimiter(body, boundary, content_start)?;
        if is_field(headers, name) {
            if found.is_some() {
                return None;
            }
            let value = body.get(content_start..next)?;
            if value.len() > MAX_FIELD_BYTES {
                return None;
            }
            let value = core::str::from_utf8(value).ok()?.trim();
            if value.is_empty() {
                return None;
            }
            found = Some(value);
        }
        at = next.checked_add(2)?;
    }
    None
}

/// The position of the next `\r\n--boundary` at or after `from` (the CRLF belongs to the delimiter).
fn find_delimiter(body: &[u8], boundary: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let hit = at.checked_add(find(body.get(at..)?, b"\r\n--")?)?;
        let name = hit.checked_add(4)?;
        if body.get(name..)?.starts_with(boundary) {
            return Some(hit);
        }
        at = hit.checked_add(2)?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = 0usize;
    loop {
        let rest = hay.get(at..)?;
        let i = at.checked_add(rest.iter().position(|&c| c == first)?)?;
        if hay.get(i..)?.starts_with(needle) {
            return Some(i);
        }
        at = i.checked_add(1)?;
    }
}

/// Whether a part's headers (CRLF-separated lines) say `form-data; name="<name>"` without a filename.
fn is_field(headers: &[u8], name: &str) -> bool {
    let Ok(headers) = core::str::from_utf8(headers) else {
        return false;
    };
    let mut disposition = headers.split("\r\n").filter_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case("content-disposition").then_some(value)
    });
    let (Some(value), None) = (disposition.next(), disposition.next()) else {
        return false;
    };
    let mut params = value.split(';');
    if !params.next().unwrap_or_default().trim().eq_ignore_ascii_case("form-data") {
        return false;
    }
    let mut named = false;
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        if key.eq_ignore_ascii_case("filename") || key.eq_ignore_ascii_case("filename*") {
            return false;
        }
        if key.eq_ignore_ascii_case("name") {
            named = value == name;
        }
    }
    named
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    const B: &str = "----WebKitFormBoundary7MA4YWxkTrZu0gW";

    /// A form body in the shape curl and the OpenAI SDKs send: fields, then a file part.
    fn form(fields: &[(&str, &str)], audio: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.extend_from_slice(
                alloc::format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        out.extend_from_slice(
            alloc::format!(
                "--{B}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
                 Content-Type: audio/wav\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(audio);
        out.extend_from_slice(alloc::format!("\r\n--{B}--\r\n").as_bytes());
        out
    }

    #[test]
    fn content_types_select_the_reader() {
        assert_eq!(BodyFormat::of(None), BodyFormat::Json);
        assert_eq!(BodyFormat::of(Some("application/json; charset=utf-8")), BodyFormat::Json);
        assert_eq!(BodyFormat::of(Some("Application/JSON")), BodyFormat::Json);
        assert_eq!(BodyFormat::of(Some("application/vnd.api+json")), BodyFormat::Json);
        assert_eq!(BodyFormat::of(Some("")), BodyFormat::Json);
        let ct = alloc::format!("multipart/form-data; boundary={B}");
        assert_eq!(BodyFormat::of(Some(&ct)), BodyFormat::Form { boundary: B });
        assert_eq!(
            BodyFormat::of(Some("Multipart/Form-Data; charset=utf-8; Boundary=\"a b:c\"")),
            BodyFormat::Form { boundary: "a b:c" }
        );
        assert_eq!(BodyFormat::of(Some("multipart/form-data")), BodyFormat::Other);
        assert_eq!(BodyFormat::of(Some("multipart/form-data; boundary=")), BodyFormat::Other);
        assert_eq!(BodyFormat::of(Some("multipart/form-data; boundary=\"\"")), BodyFormat::Other);
        let long = alloc::format!("multipart/form-data; boundary={}", "x".repeat(71));
        assert_eq!(BodyFormat::of(Some(&long)), BodyFormat::Other);
        assert_eq!(BodyFormat::of(Some("multipart/form-data; boundary=a\"b")), BodyFormat::Other);
        assert_eq!(BodyFormat::of(Some("application/x-www-form-urlencoded")), BodyFormat::Other);
        assert_eq!(BodyFormat::of(Some("application/octet-stream")), BodyFormat::Other);
        assert_eq!(BodyFormat::of(Some("text/plain")), BodyFormat::Other);
    }

    #[test]
    fn the_model_field_is_read_before_or_after_the_file() {
        let body = form(&[("model", "whisper-1"), ("stream", "true")], &[0, 1, 2, 0xff, b'\r', b'\n']);
        let r = parse_form(&body, B).unwrap();
        assert_eq!(r.model, "whisper-1");
        assert!(r.stream);
        assert_eq!((r.api, r.prompt_bytes, r.prefix_input.len()), (ApiKind::Other, 0, 0));
        // The file first, then the model (curl -F in that order), with a preamble and padding.
        let mut body = Vec::from(&b"preamble\r\n"[..]);
        body.extend_from_slice(
            alloc::format!("--{B}  \r\ncontent-disposition: form-data; name=file; filename=x.mp3\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(&[b'-'; 5000]);
        body.extend_from_slice(
            alloc::format!("\r\n--{B}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n  org/model-7b \r\n--{B}--")
                .as_bytes(),
        );
        let r = parse_form(&body, B).unwrap();
        assert_eq!(r.model, "org/model-7b");
        assert!(!r.stream);
    }

    #[test]
    fn no_model_a_file_named_model_a_duplicate_or_an_empty_one_gives_none() {
        assert_eq!(parse_form(&form(&[("language", "en")], b"x"), B), None);
        assert_eq!(parse_form(&form(&[("model", " ")], b"x"), B), None);
        assert_eq!(parse_form(&form(&[("model", "a"), ("model", "b")], b"x"), B), None);
        let file = alloc::format!(
            "--{B}\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\nm\r\n--{B}--\r\n"
        );
        assert_eq!(form_field(file.as_bytes(), B, "model"), None);
        // `name` must be exactly the field, not a prefix or another parameter.
        let other = alloc::format!(
            "--{B}\r\nContent-Disposition: form-data; name=\"models\"\r\n\r\nm\r\n--{B}--\r\n"
        );
        assert_eq!(form_field(other.as_bytes(), B, "model"), None);
        let not_utf8 = form(&[("model", "\u{0}")], b"x");
        assert_eq!(form_field(&not_utf8, B, "model"), Some("\u{0}"));
        let mut bad = Vec::new();
        bad.extend_from_slice(
            alloc::format!("--{B}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n").as_bytes(),
        );
        bad.extend_from_slice(&[0xff, 0xfe]);
        bad.extend_from_slice(alloc::format!("\r\n--{B}--").as_bytes());
        assert_eq!(form_field(&bad, B, "model"), None, "not UTF-8");
    }

    #[test]
    fn malformed_bodies_give_none() {
        let good = form(&[("model", "m")], b"x");
        assert_eq!(form_field(&good, "other-boundary", "model"), None, "wrong boundary");
        assert_eq!(form_field(b"", B, "model"), None);
        assert_eq!(form_field(b"{\"model\":\"m\"}", B, "model"), None);
        // Truncated anywhere: never a panic, and never a model read from a part that did not end.
        for cut in 0..good.len() {
            let got = form_field(good.get(..cut).unwrap(), B, "model");
            assert!(got.is_none() || got == Some("m"), "cut at {cut}: {got:?}");
        }
        // No CRLF after the delimiter, no blank line after the headers, a missing close delimiter.
        let text = alloc::format!("--{B}Content-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--{B}--");
        assert_eq!(form_field(text.as_bytes(), B, "model"), None);
        let text = alloc::format!("--{B}\r\nContent-Disposition: form-data; name=\"model\"\r\nm\r\n--{B}--");
        assert_eq!(form_field(text.as_bytes(), B, "model"), None);
        let text = alloc::format!("--{B}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm");
        assert_eq!(form_field(text.as_bytes(), B, "model"), None);
        // Every byte flipped in turn.
        for i in 0..good.len() {
            let mut b = good.clone();
            if let Some(c) = b.get_mut(i) {
                *c ^= 0x55;
            }
            let _ = form_field(&b, B, "model");
        }
    }

    #[test]
    fn hostile_bodies_stay_bounded() {
        // Megabytes of near-delimiters: linear, no allocation, no result.
        let mut body = Vec::new();
        while body.len() < 4 << 20 {
            body.extend_from_slice(b"\r\n--");
            body.extend_from_slice(B.get(..B.len() - 1).unwrap().as_bytes());
        }
        assert_eq!(form_field(&body, B, "model"), None);
        let dashes = alloc::vec![b'-'; 4 << 20];
        assert_eq!(form_field(&dashes, B, "model"), None);
        let crs = alloc::vec![b'\r'; 4 << 20];
        assert_eq!(form_field(&crs, B, "model"), None);
        // A body of more parts than the reader reads (the file part is one of them).
        let many: Vec<(String, &str)> = (0..MAX_PARTS).map(|i| (alloc::format!("f{i}"), "v")).collect();
        let mut fields: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        fields.push(("model", "m"));
        assert_eq!(parse_form(&form(&fields, b"x"), B), None);
        fields.drain(..2);
        assert_eq!(fields.len() + 1, MAX_PARTS);
        assert_eq!(parse_form(&form(&fields, b"x"), B).map(|r| r.model), Some(Cow::Borrowed("m")));
        // Part headers past the bound, and a model value past its bound.
        let big = "x".repeat(MAX_PART_HEADERS);
        let text = alloc::format!(
            "--{B}\r\nX-Pad: {big}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--{B}--"
        );
        assert_eq!(form_field(text.as_bytes(), B, "model"), None);
        let long = "m".repeat(MAX_FIELD_BYTES + 1);
        assert_eq!(form_field(&form(&[("model", &long)], b"x"), B, "model"), None);
        let max = "m".repeat(MAX_FIELD_BYTES);
        assert_eq!(form_field(&form(&[("model", &max)], b"x"), B, "model"), Some(max.as_str()));
    }
}
