//! `cargo xtask test`: what CI runs. Each step is a function so later parts (Wasm builds, Envoy
//! validation, end-to-end tests) slot in as further steps.

use crate::cmd::{cargo, have, step};

pub fn run(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("`cargo xtask test` takes no arguments, got {a:?}"));
    }
    fmt_check()?;
    clippy()?;
    unit_and_integration_tests()?;
    eprintln!("\nxtask test: all steps passed");
    Ok(())
}

fn fmt_check() -> Result<(), String> {
    step("format check", cargo().args(["fmt", "--all", "--", "--check"]))
}

fn clippy() -> Result<(), String> {
    step("clippy", cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
}

fn unit_and_integration_tests() -> Result<(), String> {
    if have("cargo", Some("nextest")) {
        step("tests", cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]))?;
        // nextest does not run doctests.
        step("doc tests", cargo().args(["test", "--workspace", "--doc"]))
    } else {
        step("tests", cargo().args(["test", "--workspace", "--no-fail-fast"]))
    }
}
