use super::*;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use proptest::prelude::*;

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const RESPONSES: &str = "/v1/responses";

fn ok<'a>(path: &str, body: &'a str) -> InferenceRequest<'a> {
    match parse_request(path, body.as_bytes()) {
        Ok(req) => req,
        Err(err) => panic!("{body} was refused: {err}"),
    }
}

/// The error message for a body that must be refused.
fn err(path: &str, body: &str) -> String {
    match parse_request(path, body.as_bytes()) {
        Ok(req) => panic!("{body} was accepted: {req:?}"),
        Err(err) => err.message(),
    }
}

// ---- path → API ----

#[test]
fn api_is_chosen_from_the_path_ignoring_query_and_prefix() {
    assert_eq!(ApiKind::from_path("/v1/chat/completions"), ApiKind::ChatCompletions);
    assert_eq!(ApiKind::from_path("/v1/chat/completions?api-version=1"), ApiKind::ChatCompletions);
    assert_eq!(ApiKind::from_path("/openai/v1/chat/completions/"), ApiKind::ChatCompletions);
    assert_eq!(ApiKind::from_path("/v1/completions"), ApiKind::Completions);
    assert_eq!(ApiKind::from_path("/v1/responses?x=/v1/completions"), ApiKind::Responses);
    assert_eq!(ApiKind::from_path("/v1/embeddings"), ApiKind::Other);
    assert_eq!(ApiKind::from_path("/v1/responses/resp_1"), ApiKind::Other);
    assert_eq!(ApiKind::from_path(""), ApiKind::Other);
}

#[test]
fn unknown_api_needs_only_a_model_and_is_not_hashed() {
    let body = r#"{"model":"embed","input":["a","b"],"max_tokens":"whatever"}"#;
    let req = ok("/v1/embeddings", body);
    assert_eq!((req.api, &*req.model), (ApiKind::Other, "embed"));
    assert!(req.prefix_input.is_empty());
    assert_eq!(req.prompt_bytes, body.len());
    assert_eq!(req.max_output_tokens(), None);
    assert_eq!(err("/v1/embeddings", r#"{"input":"a"}"#), "model: missing");
}

// ---- body-level errors ----

#[test]
fn body_errors_say_where_the_json_breaks() {
    assert_eq!(
        err(CHAT, r#"{"model": "m", "#),
        "body: not valid JSON at line 1 column 15: EOF while parsing a value"
    );
    assert_eq!(
        err(CHAT, "{\"model\":\"m\"}\n{}"),
        "body: not valid JSON at line 2 column 1: trailing characters"
    );
    assert_eq!(err(CHAT, ""), "body: not valid JSON at line 1 column 0: EOF while parsing a value");
    assert_eq!(err(CHAT, "[1,2]"), "body: expected a JSON object, found an array");
    assert_eq!(err(COMPLETIONS, "\"hi\""), "body: expected a JSON object, found a string");
    assert_eq!(err(RESPONSES, "null"), "body: expected a JSON object, found null");
    let e = parse_request(CHAT, b"{\"model\":\"m\xff\"}").unwrap_err();
    assert!(matches!(e.problem(), Problem::NotJson { .. }), "{e}");
}

#[test]
fn model_is_required_non_empty_string() {
    assert_eq!(err(CHAT, r#"{"messages":[{"role":"user","content":"x"}]}"#), "model: missing");
    assert_eq!(err(CHAT, r#"{"model":null}"#), "model: missing");
    assert_eq!(err(CHAT, r#"{"model":7}"#), "model: expected a string, found a number");
    assert_eq!(err(CHAT, r#"{"model":""}"#), "model: expected a non-empty string, found an empty string");
    let e = parse_request(CHAT, br#"{"model":""}"#).unwrap_err();
    assert_eq!((e.param(), e.code()), (Some("model"), "invalid_type"));
    let e = parse_request(CHAT, br#"{}"#).unwrap_err();
    assert_eq!((e.param(), e.code()), (Some("model"), "missing_required_parameter"));
}

#[test]
fn duplicate_routing_fields_are_refused() {
    // A server that keeps the last `model` would serve a different model than the one we routed for.
    let e = parse_request(COMPLETIONS, br#"{"model":"a","prompt":"p","model":"b"}"#).unwrap_err();
    assert_eq!(e.message(), "model: duplicate field");
    assert_eq!(e.code(), "duplicate_parameter");
    assert_eq!(
        err(CHAT, r#"{"model":"m","messages":[{"role":"user","role":"system"}]}"#),
        "messages[0].role: duplicate field"
    );
    // Unknown fields may repeat: they are not read.
    ok(COMPLETIONS, r#"{"model":"a","prompt":"p","x":1,"x":2}"#);
}

#[test]
fn common_fields_are_typed() {
    let req = ok(
        COMPLETIONS,
        r#"{"model":"m","prompt":"p","stream":true,"max_tokens":64,"cache_salt":"tenant-1","user":"u1","temperature":0.2,"logit_bias":{"1":2}}"#,
    );
    assert!(req.stream);
    assert_eq!(req.max_output_tokens(), Some(64));
    assert_eq!(req.cache_salt.as_deref(), Some("tenant-1"));
    assert_eq!(req.user.as_deref(), Some("u1"));
    // null means "not given", as in OpenAI clients that serialise every optional field.
    let req = ok(COMPLETIONS, r#"{"model":"m","prompt":"p","stream":null,"max_tokens":null,"user":null}"#);
    assert!(!req.stream);
    assert_eq!((req.max_output_tokens(), req.user), (None, None));
    assert_eq!(
        ok(COMPLETIONS, r#"{"model":"m","prompt":"p","max_tokens":100.0}"#).limits.max_tokens,
        Some(100)
    );

    let m = |v: &str| err(COMPLETIONS, &format!(r#"{{"model":"m","prompt":"p","max_tokens":{v}}}"#));
    assert_eq!(m("-1"), "max_tokens: expected a non-negative integer, found a negative number");
    assert_eq!(m("1.5"), "max_tokens: expected a non-negative integer, found a fractional number");
    assert_eq!(m("\"10\""), "max_tokens: expected a non-negative integer, found a string");
    assert_eq!(
        err(COMPLETIONS, r#"{"model":"m","prompt":"p","stream":"yes"}"#),
        "stream: expected a boolean, found a string"
    );
    assert_eq!(
        err(COMPLETIONS, r#"{"model":"m","prompt":"p","cache_salt":{}}"#),
        "cache_salt: expected a string, found an object"
    );
}

#[test]
fn output_limit_follows_the_api() {
    let chat = ok(
        CHAT,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":10,"max_completion_tokens":20}"#,
    );
    assert_eq!(chat.max_output_tokens(), Some(20));
    let chat = ok(CHAT, r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":10}"#);
    assert_eq!(chat.max_output_tokens(), Some(10));
    let resp = ok(RESPONSES, r#"{"model":"m","input":"x","max_output_tokens":30,"max_tokens":-5}"#);
    assert_eq!(resp.max_output_tokens(), Some(30), "max_tokens is not a responses field: ignored");
    // A chat-only field on a completions request is an unknown extra field, not policed.
    let comp = ok(COMPLETIONS, r#"{"model":"m","prompt":"x","max_completion_tokens":"lots"}"#);
    assert_eq!(comp.max_output_tokens(), None);
}

// ---- completions ----

#[test]
fn completions_prompt_string_is_hashed_as_text_and_borrowed() {
    let req = ok(COMPLETIONS, r#"{"model":"m","prompt":"Hello, world"}"#);
    assert_eq!(req.api, ApiKind::Completions);
    assert!(matches!(req.prefix_input, Cow::Borrowed(b"Hello, world")));
    assert_eq!(req.prompt_bytes, 12);
}

#[test]
fn completions_escaped_and_unicode_prompts_are_unescaped() {
    let req = ok(COMPLETIONS, r#"{"model":"m","prompt":"a\"b\\c\n\u00e9\ud83d\ude00"}"#);
    assert!(matches!(req.prefix_input, Cow::Owned(_)));
    assert_eq!(&*req.prefix_input, "a\"b\\c\né😀".as_bytes());
    assert_eq!(req.prompt_bytes, "a\"b\\c\né😀".len());
    let req = ok(COMPLETIONS, r#"{"model":"m","prompt":"日本語"}"#);
    assert!(matches!(req.prefix_input, Cow::Borrowed(_)));
    assert_eq!(req.prompt_bytes, 9);
    let e = err(COMPLETIONS, r#"{"model":"m","prompt":"\ud800"}"#);
    assert!(e.starts_with("body: not valid JSON at line 1 column"), "{e}");
}

#[test]
fn completions_string_lists_join_with_newlines() {
    let req = ok(COMPLETIONS, r#"{"model":"m","prompt":["ab","c","d\te"]}"#);
    assert_eq!(&*req.prefix_input, b"ab\nc\nd\te");
    assert_eq!(req.prompt_bytes, 6);
    let one = ok(COMPLETIONS, r#"{"model":"m","prompt":["only"]}"#);
    assert!(matches!(one.prefix_input, Cow::Borrowed(b"only")), "same hash as the plain string");
}

#[test]
fn completions_token_ids_hash_as_little_endian_u32() {
    let req = ok(COMPLETIONS, r#"{"model":"m","prompt":[1, 258, 4294967295]}"#);
    assert_eq!(&*req.prefix_input, &[1, 0, 0, 0, 2, 1, 0, 0, 255, 255, 255, 255][..]);
    assert_eq!(req.prompt_bytes, 12, "4 bytes per token: estimated tokens are exact");
    let nested = ok(COMPLETIONS, r#"{"model":"m","prompt":[[1],[2,3],[]]}"#);
    assert_eq!(&*nested.prefix_input, &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0][..]);
    let empty = ok(COMPLETIONS, r#"{"model":"m","prompt":[]}"#);
    assert_eq!((empty.prefix_input.len(), empty.prompt_bytes), (0, 0));
}

#[test]
fn completions_prompt_errors_name_the_element() {
    let e = |p: &str| err(COMPLETIONS, &format!(r#"{{"model":"m","prompt":{p}}}"#));
    assert_eq!(e("5"), "prompt: expected a string or an array, found a number");
    assert_eq!(e("{}"), "prompt: expected a string or an array, found an object");
    assert_eq!(e(r#"["a", 1]"#), "prompt[1]: expected a string, found a number");
    assert_eq!(
        e(r#"[1, 2, "a"]"#),
        "prompt[2]: expected a token id (an integer from 0 to 4294967295), found a string"
    );
    assert_eq!(
        e("[4294967296]"),
        "prompt[0]: expected a token id (an integer from 0 to 4294967295), found a number out of range"
    );
    assert_eq!(
        e("[-1]"),
        "prompt[0]: expected a string, a token id or an array of token ids, found a negative number"
    );
    assert_eq!(
        e("[[1],[2,-3]]"),
        "prompt[1][1]: expected a token id (an integer from 0 to 4294967295), found a negative number"
    );
    assert_eq!(e("[[1], 2]"), "prompt[1]: expected an array of token ids, found a number");
    assert_eq!(
        e("[1.5]"),
        "prompt[0]: expected a string, a token id or an array of token ids, found a fractional number"
    );
    assert_eq!(e("[null]"), "prompt[0]: expected a string, a token id or an array of token ids, found null");
    assert_eq!(err(COMPLETIONS, r#"{"model":"m"}"#), "prompt: missing");
    let e = parse_request(COMPLETIONS, br#"{"model":"m","prompt":["a",[1]]}"#).unwrap_err();
    assert_eq!(e.param(), Some("prompt[1]"));
}

#[test]
fn completions_with_prompt_embeds_need_no_prompt() {
    let req = ok(COMPLETIONS, r#"{"model":"m","prompt_embeds":"AAAA"}"#);
    assert_eq!((req.prefix_input.len(), req.prompt_bytes), (0, 0));
}

// ---- chat ----

#[test]
fn chat_hashes_the_raw_messages_json_zero_copy() {
    let body = r#"{"model":"m","messages": [ {"role":"system","content":"Be brief."}, {"role":"user","content":"Hi\n"} ] ,"tools":[{"type":"function","function":{"name":"f"}}]}"#;
    let req = ok(CHAT, body);
    let raw = r#"[ {"role":"system","content":"Be brief."}, {"role":"user","content":"Hi\n"} ]"#;
    match &req.prefix_input {
        Cow::Borrowed(b) => {
            assert_eq!(*b, raw.as_bytes());
            assert!(
                core::ptr::eq(b.as_ptr(), body[body.find('[').unwrap()..].as_ptr()),
                "points into the body"
            );
        }
        Cow::Owned(_) => panic!("copied"),
    }
    let tools_len = r#"[{"type":"function","function":{"name":"f"}}]"#.len();
    assert_eq!(req.prompt_bytes, "Be brief.".len() + "Hi\n".len() + tools_len);
    // Tools are not hashed: the same messages with other tools keep their affinity (as in GIE).
    let other_tools = body.replace(r#""name":"f""#, r#""name":"g""#);
    assert_eq!(ok(CHAT, &other_tools).prefix_input, req.prefix_input);
}

#[test]
fn chat_content_parts_are_validated_and_text_counted() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":[
        {"type":"text","text":"describe"},
        {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}},
        {"type":"image_url","image_url":"https://x/y.png"},
        {"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}},
        {"type":"video_url","video_url":{"url":"https://x/v.mp4"}},
        {"type":"video","video":"https://x/v.mp4"},
        {"type":"audio_url","audio_url":{"url":"https://x/a.wav"}},
        {"image_url":"https://x/typeless.png"},
        {"audio_url":{"url":"https://x/typeless.wav"}}
    ]},{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]},{"role":"tool","content":"42","tool_call_id":"1"},
    {"role":"assistant","content":[{"type":"refusal","refusal":"no"}]}]}"#;
    let req = ok(CHAT, body);
    assert_eq!(req.prompt_bytes, "describe".len() + "42".len() + "no".len(), "media is not counted");
}

#[test]
fn chat_errors_name_the_message_and_part() {
    let chat = |messages: &str| err(CHAT, &format!(r#"{{"model":"m","messages":{messages}}}"#));
    assert_eq!(err(CHAT, r#"{"model":"m"}"#), "messages: missing");
    assert_eq!(chat(r#"{"role":"user"}"#), "messages: expected an array, found an object");
    assert_eq!(chat("[]"), "messages: expected a non-empty array, found an empty array");
    assert_eq!(
        chat(r#"[{"role":"user","content":"a"},"hi"]"#),
        "messages[1]: expected an object, found a string"
    );
    assert_eq!(chat(r#"[{"content":"a"}]"#), "messages[0].role: missing");
    assert_eq!(chat(r#"[{"role":1,"content":"a"}]"#), "messages[0].role: expected a string, found a number");
    let four = r#"{"role":"user","content":"a"},{"role":"user","content":"a"},{"role":"user","content":"a"}"#;
    assert_eq!(
        chat(&format!(r#"[{four},{{"role":"user","content":3}}]"#)),
        "messages[3].content: expected a string or an array, found a number"
    );
    let part =
        |p: &str| chat(&format!(r#"[{{"role":"user","content":[{{"type":"text","text":"ok"}},{p}]}}]"#));
    assert_eq!(part(r#""text""#), "messages[0].content[1]: expected an object, found a string");
    assert_eq!(part(r#"{"text":"a"}"#), "messages[0].content[1].type: missing");
    assert_eq!(
        part(r#"{"image_url":7}"#),
        "messages[0].content[1].image_url: expected a string or an object, found a number"
    );
    assert_eq!(part(r#"{"detail":"low"}"#), "messages[0].content[1].type: missing");
    assert_eq!(part(r#"{"type":5}"#), "messages[0].content[1].type: expected a string, found a number");
    assert_eq!(part(r#"{"type":"text"}"#), "messages[0].content[1].text: missing");
    assert_eq!(
        part(r#"{"type":"text","text":null}"#),
        "messages[0].content[1].text: expected a string, found null"
    );
    assert_eq!(part(r#"{"type":"image_url"}"#), "messages[0].content[1].image_url: missing");
    assert_eq!(
        part(r#"{"type":"image_url","image_url":{}}"#),
        "messages[0].content[1].image_url.url: missing"
    );
    assert_eq!(
        part(r#"{"type":"image_url","image_url":{"url":7}}"#),
        "messages[0].content[1].image_url.url: expected a string, found a number"
    );
    assert_eq!(
        part(r#"{"type":"image_url","image_url":[]}"#),
        "messages[0].content[1].image_url: expected a string or an object, found an array"
    );
    assert_eq!(
        part(r#"{"type":"input_audio","input_audio":{"data":"AAAA"}}"#),
        "messages[0].content[1].input_audio.format: missing"
    );
    assert_eq!(
        part(r#"{"type":"input_audio","input_audio":"AAAA"}"#),
        "messages[0].content[1].input_audio: expected an object, found a string"
    );
    assert_eq!(part(r#"{"type":"video_url","url":"x"}"#), "messages[0].content[1].video_url: missing");
    assert_eq!(part(r#"{"type":"file"}"#), "messages[0].content[1].file: missing");
    assert_eq!(
        chat(r#"[{"role":"user","content":"a"}], "tools": {"type":"function"}"#),
        "tools: expected an array, found an object"
    );
}

#[test]
fn chat_escaped_keys_and_unknown_fields_are_understood() {
    // `\u0072ole` is `role`: a client may escape any key.
    let req = ok(
        CHAT,
        r#"{"m\u006fdel":"m","messages":[{"\u0072ole":"user","content":"é\n","name":"x","extra":{"deep":[[[]]]}}],"n":2}"#,
    );
    assert_eq!(&*req.model, "m");
    assert_eq!(req.prompt_bytes, "é\n".len());
}

// ---- responses ----

#[test]
fn responses_string_input_hashes_instructions_tools_then_input() {
    let req = ok(RESPONSES, r#"{"model":"m","input":"Tell me a joke"}"#);
    assert!(matches!(req.prefix_input, Cow::Borrowed(b"Tell me a joke")), "a lone input stays borrowed");
    assert_eq!(req.prompt_bytes, 14);
    let req = ok(
        RESPONSES,
        r#"{"model":"m","instructions":"Be funny.","tools":[{"type":"web_search"}],"input":"Tell me a joke"}"#,
    );
    assert_eq!(&*req.prefix_input, br#"Be funny.[{"type":"web_search"}]Tell me a joke"#);
    assert_eq!(req.prompt_bytes, req.prefix_input.len());
}

#[test]
fn responses_item_input_is_hashed_raw_and_validated() {
    let input = r#"[{"role":"user","content":"hi"},
        {"type":"message","role":"user","content":[{"type":"input_text","text":"look"},{"type":"input_image","image_url":"https://x/y.png"},{"type":"input_file","file_id":"f"}]},
        {"type":"message","role":"assistant","content":[{"type":"output_text","text":"ok","annotations":[]}]},
        {"type":"function_call","call_id":"c","name":"f","arguments":"{\"a\":1}"},
        {"type":"function_call_output","call_id":"c","output":"result"},
        {"type":"reasoning","id":"r","summary":[]},
        {"type":"item_reference","id":"x"}]"#;
    let body = format!(r#"{{"model":"m","input":{input},"stream":true}}"#);
    let req = ok(RESPONSES, &body);
    assert_eq!(&*req.prefix_input, input.as_bytes());
    assert!(req.stream);
    assert_eq!(
        req.prompt_bytes,
        "hi".len() + "look".len() + "ok".len() + r#"{"a":1}"#.len() + "result".len()
    );
    let no_input = ok(RESPONSES, r#"{"model":"m","previous_response_id":"r1","instructions":"x"}"#);
    assert_eq!(&*no_input.prefix_input, b"x");
}

#[test]
fn responses_errors_name_the_item_and_part() {
    let input = |i: &str| err(RESPONSES, &format!(r#"{{"model":"m","input":{i}}}"#));
    assert_eq!(input("3"), "input: expected a string or an array, found a number");
    assert_eq!(input("[3]"), "input[0]: expected an object, found a number");
    assert_eq!(input(r#"[{"content":"a"}]"#), "input[0].role: missing");
    assert_eq!(input(r#"[{"type":"message","role":"user"}]"#), "input[0].content: missing");
    assert_eq!(
        input(r#"[{"role":"user","content":{}}]"#),
        "input[0].content: expected a string or an array, found an object"
    );
    assert_eq!(input(r#"[{"role":"user","content":[{"text":"a"}]}]"#), "input[0].content[0].type: missing");
    assert_eq!(
        input(r#"[{"role":"user","content":[{"type":"input_text"}]}]"#),
        "input[0].content[0].text: missing"
    );
    assert_eq!(
        input(r#"[{"role":"user","content":[{"type":"input_text","text":1}]}]"#),
        "input[0].content[0].text: expected a string, found a number"
    );
    assert_eq!(input(r#"[{"type":7}]"#), "input[0].type: expected a string, found a number");
    assert_eq!(
        err(RESPONSES, r#"{"model":"m","input":"x","instructions":["a"]}"#),
        "instructions: expected a string, found an array"
    );
    assert_eq!(
        err(RESPONSES, r#"{"model":"m","input":"x","tools":"all"}"#),
        "tools: expected an array, found a string"
    );
    assert_eq!(
        err(RESPONSES, r#"{"model":"m","input":"x","max_output_tokens":-2}"#),
        "max_output_tokens: expected a non-negative integer, found a negative number"
    );
}

// ---- scale ----

#[test]
fn a_one_mib_prompt_is_parsed_without_copying() {
    let prompt = "abcdefghij".repeat(104_858); // just over 1 MiB
    let body = format!(r#"{{"model":"m","prompt":"{prompt}","max_tokens":8}}"#);
    let req = ok(COMPLETIONS, &body);
    assert_eq!(req.prompt_bytes, prompt.len());
    match req.prefix_input {
        Cow::Borrowed(b) => {
            assert!(core::ptr::eq(b.as_ptr(), body[r#"{"model":"m","prompt":""#.len()..].as_ptr()))
        }
        Cow::Owned(_) => panic!("a prompt without escapes must be borrowed"),
    }

    let chat = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{prompt}"}}]}}"#);
    let req = ok(CHAT, &chat);
    assert!(matches!(req.prefix_input, Cow::Borrowed(_)));
    assert_eq!(req.prompt_bytes, prompt.len());
}

#[test]
fn deep_nesting_in_unread_fields_is_harmless_and_in_read_fields_is_refused() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let body =
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x","x":{deep}}}],"y":{deep}}}"#);
    assert_eq!(ok(CHAT, &body).prompt_bytes, 1);
    let e = err(COMPLETIONS, &format!(r#"{{"model":"m","prompt":{deep}}}"#));
    assert_eq!(e, "prompt[0][0]: expected a token id (an integer from 0 to 4294967295), found an array");
}

// ---- hand-off to the scheduler ----

#[test]
fn scheduling_request_borrows_body_and_header_facts() {
    let req = ok(COMPLETIONS, r#"{"model":"base","prompt":"12345678","max_tokens":4,"cache_salt":"s"}"#);
    let meta = RequestMeta {
        request_id: "rid",
        priority: -1,
        session_token: Some("tok"),
        model_override: None,
        ..RequestMeta::default()
    };
    let s = req.scheduling_request(meta);
    assert_eq!(
        (s.request_id, s.model, s.prefix_input, s.cache_salt),
        ("rid", "base", &b"12345678"[..], Some("s"))
    );
    assert_eq!((s.priority, s.session_token, s.max_output_tokens), (-1, Some("tok"), Some(4)));
    assert_eq!(s.estimated_input_tokens(), 2);
    assert_eq!(s.estimated_total_tokens(), 6);
    let s = req.scheduling_request(RequestMeta { model_override: Some("lora-a"), ..meta });
    assert_eq!(s.model, "lora-a");
}

// ---- never panic ----

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[a-z\"\\\\\n\u{e9}\u{1F600}]{0,8}".prop_map(Value::String),
        prop_oneof![
            Just("model"),
            Just("prompt"),
            Just("messages"),
            Just("input"),
            Just("text"),
            Just("image_url"),
            Just("message"),
            Just("input_text")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let key = prop_oneof![
            Just("model"),
            Just("prompt"),
            Just("messages"),
            Just("input"),
            Just("instructions"),
            Just("tools"),
            Just("role"),
            Just("content"),
            Just("type"),
            Just("text"),
            Just("image_url"),
            Just("url"),
            Just("input_audio"),
            Just("max_tokens"),
            Just("stream"),
            Just("zz"),
        ]
        .prop_map(String::from);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        for path in [CHAT, COMPLETIONS, RESPONSES, "/other"] {
            if let Err(e) = parse_request(path, &body) {
                prop_assert!(!e.message().is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_errors_are_located(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        for path in [CHAT, COMPLETIONS, RESPONSES, "/other"] {
            match parse_request(path, &body) {
                Ok(req) => prop_assert!(!req.model.is_empty()),
                // Syntactically valid JSON is only ever refused for a located reason.
                Err(e) => prop_assert!(!matches!(e.problem(), Problem::NotJson { .. }), "{}", e),
            }
        }
    }

    #[test]
    fn valid_chat_bodies_hash_their_messages(texts in prop::collection::vec("\\PC{0,20}", 1..5)) {
        let messages: Vec<serde_json::Value> =
            texts.iter().map(|t| serde_json::json!({"role": "user", "content": t})).collect();
        let body = serde_json::to_vec(&serde_json::json!({"model": "m", "messages": messages})).unwrap();
        let req = parse_request(CHAT, &body).unwrap();
        let expected = serde_json::to_vec(&messages).unwrap();
        prop_assert_eq!(&*req.prefix_input, expected.as_slice());
        prop_assert_eq!(req.prompt_bytes, texts.iter().map(|t| t.len()).sum::<usize>());
    }
}

// ---- one pass over the body, same answers as two ----

/// A chat or responses body around `value` (as `messages` / `input`), with the members in the order
/// given by `order` and `ws` as the whitespace around every top-level token.
fn body_around(api: ApiKind, value: &str, order: usize, ws: &str, tools: Option<&str>) -> String {
    let key = if api == ApiKind::Responses { "input" } else { "messages" };
    let mut members = vec![
        format!(r#""model"{ws}:{ws}"m""#),
        format!(r#""{key}"{ws}:{ws}{value}"#),
        format!(r#""zz"{ws}:{ws}{{"messages":[1]}}"#),
    ];
    if let Some(tools) = tools {
        members.push(format!(r#""tools"{ws}:{ws}{tools}"#));
    }
    let len = members.len();
    members.rotate_left(order % len);
    format!("{ws}{{{ws}{}{ws}}}{ws}", members.join(&format!("{ws},{ws}")))
}

fn chat_message() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let text = "[a-z \"\\\n\u{e9}\u{1F600}]{0,12}";
    prop_oneof![
        (text, text).prop_map(|(role, content)| json!({"role": role, "content": content})),
        text.prop_map(|t| json!({"role": "user", "content": [{"type": "text", "text": t}], "name": t})),
        text.prop_map(
            |t| json!({"content": null, "role": "assistant", "tool_calls": [{"id": t, "x": [1.5, -2]}]})
        ),
        text.prop_map(
            |t| json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": t}}]})
        ),
        text.prop_map(
            |t| json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": t}]})
        ),
        text.prop_map(|t| json!({"type": "function_call_output", "call_id": "c", "output": {"k": [t]}})),
    ]
}

proptest! {
    #[test]
    fn single_pass_agrees_with_two_passes(
        value in prop_oneof![
            prop::collection::vec(chat_message(), 0..4).prop_map(serde_json::Value::Array),
            json_value(),
        ],
        pretty in any::<bool>(),
        order in 0usize..4,
        ws in prop_oneof![Just(""), Just(" "), Just("\n  "), Just("\t\r\n")],
        tools in proptest::option::of(prop_oneof![Just("[]"), Just(r#"[{"type":"function"}]"#), Just("{}")]),
    ) {
        let value = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            serde_json::to_string(&value).unwrap()
        };
        for api in [ApiKind::ChatCompletions, ApiKind::Responses] {
            let body = body_around(api, &value, order, ws, tools);
            let two = two_pass(api, body.as_bytes());
            // Without escaped keys, over-deep values or numbers out of range, the single pass never
            // needs the fallback, and whatever it accepts the two passes accept identically.
            prop_assert_eq!(single_pass(api, body.as_bytes()), two.clone().ok(), "{}", body);
            prop_assert_eq!(parse_request(if api == ApiKind::Responses { RESPONSES } else { CHAT }, body.as_bytes()), two);
        }
    }
}

#[test]
fn single_pass_hashes_the_same_raw_messages_wherever_they_sit() {
    let messages = r#"[ {"role":"user","content":"a"} ]"#;
    for body in [
        format!(r#"{{"model":"m","messages":{messages}}}"#),
        format!("{{ \"model\":\"m\" ,\n \"messages\" :\t{messages}\r\n}}\n"),
        format!(r#"{{"messages"  :  {messages}  ,  "model":"m"}}"#),
        // Escaped keys elsewhere do not matter.
        format!(r#"{{"m\u006fdel":"m","messages":{messages},"n":1,"\u006e\u006e":2}}"#),
    ] {
        let req = single_pass(ApiKind::ChatCompletions, body.as_bytes());
        let req = req.unwrap_or_else(|| panic!("{body} fell back to two passes"));
        assert_eq!(&*req.prefix_input, messages.as_bytes(), "{body}");
        assert_eq!(Ok(req), two_pass(ApiKind::ChatCompletions, body.as_bytes()));
    }
}

#[test]
fn bodies_the_single_pass_cannot_place_still_parse() {
    // An escaped `messages` key, or an escaped key right after it, hides the value's position; the
    // two-pass parse then answers, with the same result.
    let plain = r#"[{"role":"user","content":"a"}]"#;
    let big_number = r#"[{"role":"user","content":"a","x":1e999}]"#;
    for (body, raw) in [
        (format!(r#"{{"model":"m","m\u0065ssages":{plain}}}"#), plain),
        (format!(r#"{{"model":"m","messages":{plain},"\u006e":1}}"#), plain),
        // Numbers out of f64 range in unread message fields pass serde_json's skipping, not its parsing.
        (format!(r#"{{"model":"m","messages":{big_number}}}"#), big_number),
    ] {
        assert!(single_pass(ApiKind::ChatCompletions, body.as_bytes()).is_none(), "{body}");
        let req = ok(CHAT, &body);
        assert_eq!((&*req.prefix_input, req.prompt_bytes), (raw.as_bytes(), 1), "{body}");
    }
}

#[test]
fn bad_utf8_anywhere_in_messages_is_refused_like_before() {
    // Unread message fields are not decoded, yet the raw `messages` must be UTF-8 to be hashed as JSON.
    let body = b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\",\"name\":\"\xff\"}]}";
    let e = parse_request(CHAT, body).unwrap_err();
    assert!(matches!(e.problem(), Problem::NotJson { .. }), "{e}");
    let body = b"{\"model\":\"m\",\"input\":[{\"role\":\"user\",\"content\":\"a\",\"id\":\"\xff\"}]}";
    let e = parse_request(RESPONSES, body).unwrap_err();
    assert!(matches!(e.problem(), Problem::NotJson { .. }), "{e}");
    // An unread top-level field is not checked, in either pass.
    let body = b"{\"model\":\"m\",\"x\":\"\xff\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}";
    assert!(single_pass(ApiKind::ChatCompletions, body).is_some());
}

#[test]
fn body_field_errors_come_before_message_errors() {
    let bad_message = r#"[{"role":"user","content":3}]"#;
    assert_eq!(
        err(CHAT, &format!(r#"{{"model":"m","messages":{bad_message},"tools":{{}}}}"#)),
        "tools: expected an array, found an object"
    );
    assert_eq!(
        err(CHAT, &format!(r#"{{"model":"m","messages":{bad_message},"model":"n"}}"#)),
        "model: duplicate field"
    );
    assert_eq!(err(CHAT, &format!(r#"{{"messages":{bad_message}}}"#)), "model: missing");
    assert_eq!(
        err(CHAT, &format!(r#"{{"model":"m","messages":{bad_message},"stream":1}}"#)),
        "stream: expected a boolean, found a number"
    );
    let e =
        parse_request(CHAT, format!(r#"{{"model":"m","messages":{bad_message},"#).as_bytes()).unwrap_err();
    assert!(matches!(e.problem(), Problem::NotJson { .. }), "{e}");
    assert_eq!(
        err(RESPONSES, r#"{"model":"m","input":[3],"max_output_tokens":-1}"#),
        "max_output_tokens: expected a non-negative integer, found a negative number"
    );
}

#[test]
fn error_paths_render_for_every_shape() {
    // A body-level error keeps `param` empty; field errors give the path as `param`.
    let e = parse_request(CHAT, b"{").unwrap_err();
    assert_eq!((e.param(), e.path(), e.code()), (None, "body", "invalid_json"));
    let e = parse_request(CHAT, br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#)
        .unwrap_err();
    assert_eq!(e.param(), Some("messages[0].content[0].text"));
    assert_eq!(vec![e.to_string()], vec![e.message()]);
}

fn completions_prompt() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let text = "[a-z \"\\\n\u{e9}\u{1F600}]{0,40}";
    prop_oneof![
        text.prop_map(serde_json::Value::String),
        prop::collection::vec(text, 0..3).prop_map(|t| json!(t)),
        prop::collection::vec(any::<u32>(), 0..5).prop_map(|t| json!(t)),
        prop::collection::vec(prop::collection::vec(any::<u32>(), 0..3), 0..3).prop_map(|t| json!(t)),
    ]
}

proptest! {
    /// Every API goes through the fast reader first: whatever it accepts, the serde_json parse accepts
    /// identically, and a well-formed body never needs the fallback.
    #[test]
    fn the_fast_reader_agrees_with_serde_json_for_every_api(
        prompt in completions_prompt(),
        other in json_value(),
        max_tokens in prop_oneof![Just(serde_json::json!(16)), Just(serde_json::json!(16.0)), Just(serde_json::json!(null))],
    ) {
        let body = serde_json::json!({
            "model": "m", "prompt": prompt, "max_tokens": max_tokens, "stream": true, "zz": other,
        });
        let body = serde_json::to_vec(&body).unwrap();
        for api in [ApiKind::Completions, ApiKind::Other] {
            let two = two_pass(api, &body);
            prop_assert!(two.is_ok());
            prop_assert_eq!(single_pass(api, &body), two.ok());
        }
        // Anything at all: the fast reader never accepts differently.
        let body = serde_json::to_vec(&other).unwrap();
        for api in [ApiKind::Completions, ApiKind::ChatCompletions, ApiKind::Responses, ApiKind::Other] {
            if let Some(fast) = single_pass(api, &body) {
                prop_assert_eq!(Ok(fast), two_pass(api, &body));
            }
        }
    }
}

// ---- Anthropic Messages (llm-d's anthropic-parser) ----

#[test]
fn anthropic_messages_hash_system_then_messages() {
    assert_eq!(ApiKind::from_path("/v1/messages"), ApiKind::Messages);
    assert_eq!(ApiKind::from_path("/v1/messages/count_tokens"), ApiKind::Other);
    let body = r#"{"model": "claude", "max_tokens": 64, "stream": true, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "tools": []}"#;
    let req = ok("/v1/messages", body);
    assert_eq!(
        (req.api, &*req.model, req.stream, req.max_output_tokens()),
        (ApiKind::Messages, "claude", true, Some(64))
    );
    let messages = r#"[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]"#;
    assert_eq!(&*req.prefix_input, format!("\"Be brief.\"{messages}").as_bytes());
    assert_eq!(req.prompt_bytes, "\"Be brief.\"".len() + messages.len());
    // Without a system prompt the messages are hashed as they lie in the body.
    let req = ok("/v1/messages", r#"{"model": "c", "messages": [{"role": "user", "content": "x"}]}"#);
    assert!(matches!(req.prefix_input, Cow::Borrowed(_)));
    assert_eq!(&*req.prefix_input, br#"[{"role": "user", "content": "x"}]"#);
    assert_eq!(err("/v1/messages", r#"{"model": "c"}"#), "messages: missing");
    assert_eq!(
        err("/v1/messages", r#"{"model": "c", "messages": [ ]}"#),
        "messages: expected a non-empty array, found an empty array"
    );
    assert_eq!(
        err("/v1/messages", r#"{"model": "c", "messages": {}}"#),
        "messages: expected an array, found an object"
    );
    assert_eq!(
        err("/v1/messages", r#"{"model": "c", "messages": [1], "system": 5}"#),
        "system: expected a string or an array, found a number"
    );
    assert_eq!(err("/v1/messages", r#"{"messages": [1]}"#), "model: missing");
}

// ---- vLLM generate (llm-d's vllmhttp-parser) ----

#[test]
fn vllm_generate_hashes_token_ids_and_needs_no_model() {
    assert_eq!(ApiKind::from_path("/inference/v1/generate"), ApiKind::Generate);
    let req = ok(
        "/inference/v1/generate",
        r#"{"token_ids": [1, 258], "sampling_params": {"max_tokens": 16, "temperature": 0}, "stream": true}"#,
    );
    assert_eq!(
        (req.api, &*req.model, req.stream, req.max_output_tokens()),
        (ApiKind::Generate, "", true, Some(16))
    );
    assert_eq!(&*req.prefix_input, &[1, 0, 0, 0, 2, 1, 0, 0]);
    assert_eq!(req.prompt_bytes, 8);
    let req = ok(
        "/inference/v1/generate",
        r#"{"model": "m", "token_ids": [7], "sampling_params": {"max_tokens": 1.5}}"#,
    );
    assert_eq!((&*req.model, req.max_output_tokens()), ("m", None));
    assert_eq!(err("/inference/v1/generate", r#"{"model": "m"}"#), "token_ids: missing");
    assert_eq!(
        err("/inference/v1/generate", r#"{"token_ids": []}"#),
        "token_ids: expected a non-empty array of token ids, found an empty array"
    );
    assert_eq!(
        err("/inference/v1/generate", r#"{"token_ids": ["a"]}"#),
        "token_ids: expected an array of token ids, found an array"
    );
    assert_eq!(
        err("/inference/v1/generate", r#"{"token_ids": [1], "model": ""}"#),
        "model: expected a non-empty string, found an empty string"
    );
}
