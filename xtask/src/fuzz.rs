//! `cargo xtask fuzz [--seconds N] [--runs M] [TARGET]`: the coverage-guided fuzz targets in `fuzz/`
//! (cargo-fuzz, libFuzzer), each run for N seconds (or M executions, whichever comes first), with a
//! table of executions, coverage and crashes.
//!
//! Installs what a fresh machine lacks: the nightly toolchain (the sanitizer-coverage flags are
//! unstable) and cargo-fuzz. All targets are built once, into `target/fuzz/`, without a sanitizer: the
//! code under test is safe Rust, and a panic, an overflow (debug assertions are on), a hang or an
//! out-of-memory is what a target can find. Corpora grow in `target/fuzz/corpus/<target>/` across runs;
//! seeds from the test fixtures are written to `target/fuzz/seeds/<target>/` on every run. A crash
//! leaves its input in `target/fuzz/artifacts/<target>/` and fails the command: replay it with the
//! target binary, fix the code, and keep the input as a `#[test]` in the crate that owns the code.
//! `cargo xtask test` runs every target for a few seconds as a smoke check (`smoke`).

use crate::cmd::{have, step, target_dir, workspace_root};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cargo-fuzz release line the build flags were checked with.
const CARGO_FUZZ_VERSION: &str = "0.13";
/// Seconds per target when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;
/// Seconds per target in `cargo xtask test`.
const SMOKE_SECONDS: u64 = 2;

pub fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut runs: Option<u64> = None;
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a number of seconds per target")?;
                seconds = v
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or(format!("--seconds: expected a whole number of seconds above 0, got {v:?}"))?;
            }
            "--runs" => {
                let v = it.next().ok_or("--runs needs a number of executions per target")?;
                runs =
                    Some(v.parse().ok().filter(|n| *n > 0).ok_or(format!(
                        "--runs: expected a whole number of executions above 0, got {v:?}"
                    ))?);
            }
            t if !t.starts_with('-') && only.is_none() => only = Some(t.to_owned()),
            other => {
                return Err(format!(
                    "`cargo xtask fuzz [--seconds N] [--runs M] [TARGET]`: unexpected argument {other:?}"
                ))
            }
        }
    }
    let all = targets()?;
    let chosen = match only {
        Some(t) if all.contains(&t) => vec![t],
        Some(t) => return Err(format!("no fuzz target {t:?}; the targets are: {}", all.join(", "))),
        None => all,
    };
    campaign(&chosen, seconds, runs)
}

/// Every target for a few seconds: they build, start from their seeds and find nothing quickly.
pub fn smoke() -> Result<(), String> {
    campaign(&targets()?, SMOKE_SECONDS, None)
}

/// The target names, from the `[[bin]]` entries of `fuzz/Cargo.toml`.
fn targets() -> Result<Vec<String>, String> {
    let manifest = workspace_root().join("fuzz/Cargo.toml");
    let text =
        fs::read_to_string(&manifest).map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let (true, Some(v)) = (in_bin, line.strip_prefix("name")) {
            names.push(v.trim_start().trim_start_matches('=').trim().trim_matches('"').to_owned());
        }
    }
    if names.is_empty() {
        return Err(format!("{} names no [[bin]] fuzz targets", manifest.display()));
    }
    Ok(names)
}

struct Row {
    target: String,
    runs: u64,
    seconds: u64,
    coverage: u64,
    features: u64,
    corpus: String,
    crash: Option<String>,
}

fn campaign(targets: &[String], seconds: u64, runs: Option<u64>) -> Result<(), String> {
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let dir = target_dir().join("fuzz");
    step(
        "build fuzz targets",
        nightly("cargo")
            .args(["fuzz", "build", "--sanitizer", "none", "--fuzz-dir"])
            .arg(workspace_root().join("fuzz"))
            .env("CARGO_TARGET_DIR", &dir),
    )?;
    let bins = dir.join(host_triple()?).join("release");
    let mut rows = Vec::new();
    for t in targets {
        let seeds = dir.join("seeds").join(t);
        write_seeds(t, &seeds)?;
        rows.push(run_target(&bins.join(t), t, &dir, &seeds, seconds, runs)?);
    }
    eprintln!(
        "\n{:<20} {:>12} {:>8} {:>8} {:>8}  {:<16} crash",
        "target", "executions", "seconds", "cov", "ft", "corpus"
    );
    for r in &rows {
        eprintln!(
            "{:<20} {:>12} {:>8} {:>8} {:>8}  {:<16} {}",
            r.target,
            r.runs,
            r.seconds,
            r.coverage,
            r.features,
            r.corpus,
            r.crash.as_deref().unwrap_or("none")
        );
    }
    let crashed: Vec<&Row> = rows.iter().filter(|r| r.crash.is_some()).collect();
    if crashed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} fuzz target(s) crashed: {}. Replay one with `{}/<target> <input>`, fix it, and keep the input \
         as a regression test in the crate that owns the code (logs in {}).",
        crashed.len(),
        crashed.iter().map(|r| r.target.as_str()).collect::<Vec<_>>().join(", "),
        bins.display(),
        dir.join("logs").display()
    ))
}

/// Runs one target binary for `seconds` (or `runs` executions, if given and reached first) over its
/// corpus and seeds; its libFuzzer log goes to `target/fuzz/logs/<target>.log` and its last status
/// line into the row.
fn run_target(
    bin: &Path,
    target: &str,
    dir: &Path,
    seeds: &Path,
    seconds: u64,
    runs: Option<u64>,
) -> Result<Row, String> {
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    let logs = dir.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    eprintln!("\n==> fuzz {target} for {seconds} s (log: {})", log_path.display());
    let mut fuzzer = Command::new(bin);
    if let Some(n) = runs {
        fuzzer.arg(format!("-runs={n}"));
    }
    let status = fuzzer
        .arg(&corpus)
        .arg(seeds)
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes 10 s, or 2 GB, is a finding too.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .map_err(|e| format!("cannot run {}: {e} (was it built?)", bin.display()))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let mut row = Row {
        target: target.to_owned(),
        runs: 0,
        seconds: 0,
        coverage: 0,
        features: 0,
        corpus: String::new(),
        crash: None,
    };
    for line in text.lines() {
        if line.starts_with('#') && line.contains("cov: ") {
            row.coverage = field(line, "cov:").and_then(|v| v.parse().ok()).unwrap_or(row.coverage);
            row.features = field(line, "ft:").and_then(|v| v.parse().ok()).unwrap_or(row.features);
            row.corpus = field(line, "corp:").unwrap_or_default().to_owned();
        } else if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            row.runs = v.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 123 runs in 61 second(s)"
            let mut words = rest.split_whitespace();
            row.runs = words.next().and_then(|n| n.parse().ok()).unwrap_or(row.runs);
            row.seconds = words.nth(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if let Some(path) = line.split("Test unit written to ").nth(1) {
            row.crash = Some(path.trim().to_owned());
        }
    }
    if !status.success() && row.crash.is_none() {
        row.crash = Some(format!("exit {status} without an input written; see {}", log_path.display()));
    }
    if let Some(crash) = &row.crash {
        let why = text.lines().find(|l| l.contains("panicked at") || l.starts_with("==")).unwrap_or("");
        eprintln!("{target}: crash {crash}\n{why}");
    }
    Ok(row)
}

/// The value after `name` in a libFuzzer status line (`cov: 1234`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == name)?;
    words.next()
}

/// A command run with the nightly toolchain (rustup's, whatever toolchain invoked xtask).
fn nightly(program: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", program]).current_dir(workspace_root());
    // The stable cargo that runs xtask exports its own paths; let nightly's win.
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN"] {
        c.env_remove(var);
    }
    c
}

fn host_triple() -> Result<String, String> {
    let out = nightly("rustc").arg("-vV").output().map_err(|e| format!("cannot run nightly rustc: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .ok_or_else(|| String::from("`rustc +nightly -vV` printed no host triple"))
}

/// Installs the nightly toolchain (minimal profile) when rustup lacks it.
fn ensure_nightly() -> Result<(), String> {
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map_err(|e| format!("rustup is needed to install the nightly toolchain fuzzing uses: {e}"))?;
    if String::from_utf8_lossy(&list.stdout).lines().any(|l| l.starts_with("nightly")) {
        return Ok(());
    }
    eprintln!("\nxtask: the nightly toolchain is missing; installing it (minimal profile)");
    step(
        "install nightly",
        Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
    )
}

/// Installs cargo-fuzz from crates.io when `cargo fuzz` is missing; like cargo-deny, built without
/// optimisation (it only drives cargo) in cargo's own temporary directory.
fn ensure_cargo_fuzz() -> Result<(), String> {
    if have("cargo", Some("fuzz")) {
        return Ok(());
    }
    eprintln!("\nxtask: cargo-fuzz is missing; installing it from crates.io (under a minute, once)");
    crate::tools::cargo_install_unoptimised("cargo-fuzz", CARGO_FUZZ_VERSION)
}

/// Writes the seeds of `target` into `dir` (emptied first): test fixtures and known-good inputs, each
/// with the selector byte the target reads first where it has one.
fn write_seeds(target: &str, dir: &Path) -> Result<(), String> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let root = workspace_root();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let with_selector = |selectors: u8, bodies: &[&[u8]], out: &mut Vec<Vec<u8>>| {
        for s in 0..selectors {
            for b in bodies {
                out.push([&[s][..], b].concat());
            }
        }
    };
    match target {
        // Selector: the API path (fuzz/src/lib.rs PATHS; json_differential has three).
        "request_body" => with_selector(8, REQUEST_BODIES, &mut seeds),
        "json_differential" => with_selector(3, REQUEST_BODIES, &mut seeds),
        // Selector: the engine, in `Engine::ALL` order (vLLM, SGLang, trtllm-serve, Triton).
        "metrics_text" => {
            let fixtures = root.join("scheduler-core/tests/fixtures");
            for (engine, file) in [
                (0u8, "vllm_v0_11.txt"),
                (0, "vllm_v0_6.txt"),
                (1, "sglang.txt"),
                (2, "trtllm_serve.txt"),
                (3, "triton_trtllm.txt"),
            ] {
                seeds.push([&[engine][..], &read(&fixtures.join(file))?].concat());
            }
        }
        "config_json" => {
            for f in ["gie-default.json", "recommended.json"] {
                seeds.push(read(&root.join("envoy-config/scheduling").join(f))?);
            }
        }
        "config_yaml" => {
            let dir = root.join("test-harness/fixtures/upstream-configs/llm-d-router-v0.10.0");
            let entries = fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            for e in entries.flatten() {
                seeds.push(read(&e.path())?);
            }
        }
        // The other targets read structured input (`arbitrary`): the fuzzer starts from nothing.
        _ => {}
    }
    for (i, s) in seeds.iter().enumerate() {
        let path = dir.join(format!("seed-{i:03}"));
        fs::write(&path, s).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("cannot read seed {}: {e}", path.display()))
}

/// Request bodies of every API the core reads, valid and slightly off.
const REQUEST_BODIES: &[&[u8]] = &[
    br#"{"model":"llama","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi \u00e9"},{"type":"image_url","image_url":{"url":"data:x"}}]}],"max_completion_tokens":10,"stream":true,"stream_options":{"include_usage":true},"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"user":"u","cache_salt":"s"}"#,
    br#"{"model":"llama","prompt":"Once upon a time","max_tokens":16,"stream":false}"#,
    br#"{"model":"llama","prompt":["a","b\n"],"max_tokens":1}"#,
    br#"{"model":"llama","prompt":[[1,2,3],[4]]}"#,
    br#"{"model":"llama","instructions":"x","input":[{"role":"user","content":[{"type":"input_text","text":"hey"}]}],"max_output_tokens":5}"#,
    br#"{"model":"llama","input":"embed me","encoding_format":"float"}"#,
    br#"{"model":"claude","system":[{"type":"text","text":"sys"}],"messages":[{"role":"user","content":"hi"}],"max_tokens":8}"#,
    br#"{"model":"llama","token_ids":[1,2,3],"sampling_params":{"max_tokens":4}}"#,
    br#"{"model":"","messages":[]}"#,
    br#"{"model":"m","model":"n","messages":[{"role":"user","content":"dup"}]}"#,
    b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}",
    b"{\"model\":\"m\",\"prompt\":\"1e400\",\"x\":1e400,\"y\":[[[[[[]]]]]]} ",
];
