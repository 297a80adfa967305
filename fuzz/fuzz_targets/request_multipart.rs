//! `multipart/form-data` bodies (audio transcriptions and the like): the content-type's boundary, then
//! the form read for `model` and `stream`. Half the inputs are well-formed forms built from arbitrary
//! parts, so the fuzzer spends its time past the first delimiter.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scheduler_core::request::{form_field, parse_form, BodyFormat};

#[derive(Arbitrary, Debug)]
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    value: Vec<u8>,
    /// A bare LF where CRLF belongs.
    bare_lf: bool,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw {
        content_type: String,
        body: Vec<u8>,
    },
    Parts {
        boundary: String,
        quoted: bool,
        preamble: Vec<u8>,
        parts: Vec<Part>,
        close: bool,
        epilogue: Vec<u8>,
    },
}

fn form(boundary: &str, preamble: &[u8], parts: &[Part], close: bool, epilogue: &[u8]) -> Vec<u8> {
    let mut b = preamble.to_vec();
    for p in parts {
        let eol: &[u8] = if p.bare_lf { b"\n" } else { b"\r\n" };
        b.extend_from_slice(if b.is_empty() { b"--" } else { b"\r\n--" });
        b.extend_from_slice(boundary.as_bytes());
        b.extend_from_slice(eol);
        b.extend_from_slice(b"Content-Disposition: form-data; name=\"");
        b.extend_from_slice(p.name.as_bytes());
        b.push(b'"');
        if let Some(f) = &p.filename {
            b.extend_from_slice(b"; filename=\"");
            b.extend_from_slice(f.as_bytes());
            b.push(b'"');
        }
        b.extend_from_slice(eol);
        if let Some(ct) = &p.content_type {
            b.extend_from_slice(b"Content-Type: ");
            b.extend_from_slice(ct.as_bytes());
            b.extend_from_slice(eol);
        }
        b.extend_from_slice(eol);
        b.extend_from_slice(&p.value);
    }
    if close {
        b.extend_from_slice(b"\r\n--");
        b.extend_from_slice(boundary.as_bytes());
        b.extend_from_slice(b"--\r\n");
    }
    b.extend_from_slice(epilogue);
    b
}

fn read(content_type: &str, body: &[u8]) {
    let BodyFormat::Form { boundary } = BodyFormat::of(Some(content_type)) else { return };
    let model = form_field(body, boundary, "model");
    match parse_form(body, boundary) {
        Some(req) => {
            assert_eq!(Some(req.model.as_ref()), model);
            assert!(!req.model.is_empty());
            assert_eq!(req.model.trim(), req.model);
        }
        None => assert_eq!(model, None),
    }
}

fuzz_target!(|input: Input| match input {
    Input::Raw { content_type, body } => read(&content_type, &body),
    Input::Parts { boundary, quoted, preamble, parts, close, epilogue } => {
        let body = form(&boundary, &preamble, &parts, close, &epilogue);
        let content_type = if quoted {
            format!("multipart/form-data; boundary=\"{boundary}\"")
        } else {
            format!("Multipart/Form-Data ; charset=utf-8; boundary={boundary}")
        };
        read(&content_type, &body);
    }
});
