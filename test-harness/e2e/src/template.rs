//! `{{NAME}}` placeholders in the files under `envoy-config/`, filled by the tests and by `cargo xtask`.
//! Plain std with no crate imports: xtask includes this very file, so there is one renderer, not two.

/// The placeholder names in `template`, in order of first appearance, each once.
pub fn placeholders(template: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = &after[..end];
        if is_name(name) && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        rest = &after[end + 2..];
    }
    names
}

/// Replaces every `{{NAME}}` with its value. Fails naming the placeholders that have no value, so a
/// template and its caller cannot silently drift apart; values that are not used are fine.
pub fn render(template: &str, values: &[(&str, String)]) -> Result<String, String> {
    let missing: Vec<String> =
        placeholders(template).into_iter().filter(|n| !values.iter().any(|(k, _)| k == n)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "no value for placeholder(s) {} (the scheme is described in envoy-config/README.md)",
            missing.iter().map(|n| format!("{{{{{n}}}}}")).collect::<Vec<_>>().join(", ")
        ));
    }
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    Ok(out)
}

/// `NAME` in `{{NAME}}`: upper-case letters, digits and `_`, so YAML's own braces never match.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}
