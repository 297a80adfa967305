//! Command-line flags of the `model-sim` binary (a small hand-written parser keeps the build lean).

use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use model_sim::EngineConfig;

use super::faults::{Env, Faults, FaultsPatch};
use super::metrics;

pub const HELP: &str = "\
model-sim: one simulated vLLM (or SGLang) replica over HTTP, timed by a calibrated continuous-batching
model (see test-harness/model-sim). Serves /v1/completions, /v1/chat/completions (JSON and SSE),
/v1/models, /health, /metrics, and /admin/faults (GET to read, POST a JSON object to change fault knobs).

USAGE: model-sim [FLAGS]

Serving:
  --host <IP>                      address to bind [default: 127.0.0.1, loopback only]
  --port <PORT>                    port to bind; 0 picks a free one [default: 8000]
  --control-port <PORT>            also serve /admin/faults (only) on this port, which keeps answering
                                   while the main port refuses connections; 0 picks a free one. The
                                   listening line then ends with control=http://HOST:PORT [default: none]
  --model <NAME>                   served model name [default: meta-llama/Llama-3.1-8B-Instruct]
  --lora <NAME[,NAME..]>           LoRA adapters this replica can serve (repeatable)
  --replica-name <NAME>            value of the x-model-sim-replica response header [default: HOST:PORT]
  --engine <vllm|sglang>           which server's /metrics names to expose [default: vllm]
  --force-include-usage            always end SSE streams with a usage chunk (vLLM's
                                   --enable-force-include-usage); otherwise only when the request sets
                                   stream_options.include_usage
  --default-output-tokens <N>      mean output length when a request has no max_tokens; the length is
                                   drawn uniformly from [N/2, 3N/2] with the seed [default: 200]

Timing model:
  --profile <h100|a100>            calibration preset: Llama-3.1-8B on H100 or Llama-2-7B on A100-40GB
                                   [default: h100]
  --max-num-batched-tokens <N>     token budget per engine step [preset: 8192 / 2048]
  --max-num-seqs <N>               most running sequences [preset: 1024 / 256]
  --num-gpu-blocks <N>             KV-cache blocks [preset: 27500 / 2810]
  --block-size <N>                 tokens per KV block [default: 16]
  --max-lora <N>                   adapters resident at once [default: 1]
  --lora-kv-tokens <N>             KV tokens each resident adapter costs [preset: 0 / 1600]
  --no-prefix-caching              disable prefix caching
  --api-overhead-ms <MS>           per-request API/tokenizer/HTTP overhead added to TTFT [default: 20]
  --step-jitter <F>                relative step-time noise, uniform in +-F [default: 0]
  --speed <F>                      this replica's speed against the profile: 0.5 = every step takes twice
                                   as long (a slower GPU, a straggler) [default: 1]
  --time-scale <F>                 wall seconds per simulated second; 0.1 runs 10x faster [default: 1]
  --seed <N>                       seed for output lengths, jitter and the 5xx fault [default: 0]

Load:
  --busy <N>                       start with N background requests that are resubmitted as they
                                   finish, so the replica stays loaded [default: 0]
  --busy-prompt-tokens <N>         prompt length of each background request [default: 1000]
  --busy-output-tokens <N>         output length of each background request [default: 2000]

Faults (all also settable at runtime with POST /admin/faults, same names with underscores; times are
wall milliseconds, at most 86400000):
  --refuse-connections             close the main port until the knob is cleared on the control port:
                                   new connections are refused, open ones closed (needs --control-port)
  --refuse-for-ms <MS>             the same for MS milliseconds, then the port re-opens by itself
  --completions-hang               read completion requests and never answer them
  --response-delay-ms <MS>         wait this long before answering a completion request [default: 0]
  --error-rate <F>                 fraction of completion requests answered with an error [default: 0]
  --error-status <500..599>        the status of those errors [default: 500]
  --drop-after-chunks <N>          cut the connection of every SSE stream after N data chunks
                                   [default: 0 = never]
  --metrics-delay-ms <MS>          answer /metrics only after this many milliseconds [default: 0]
  --metrics-hang                   never answer /metrics
  --slowdown <F>                   every step takes F times longer until set back to 1 (a noisy
                                   neighbour) [default: 1]
  --metrics-frozen                 serve the last /metrics page again and again, values never updated
  --metrics-garbage                answer /metrics with a body that is not Prometheus text
  --drop-gauges <NAME[,NAME..]>    leave these metric families off /metrics, e.g.
                                   vllm:kv_cache_usage_perc (repeatable)

  -h, --help                       print this help
";

/// Flags that take a value (the boolean ones are matched before these).
const VALUE_FLAGS: [&str; 31] = [
    "--host",
    "--port",
    "--control-port",
    "--model",
    "--lora",
    "--replica-name",
    "--engine",
    "--default-output-tokens",
    "--profile",
    "--max-num-batched-tokens",
    "--max-num-seqs",
    "--num-gpu-blocks",
    "--block-size",
    "--max-lora",
    "--lora-kv-tokens",
    "--api-overhead-ms",
    "--step-jitter",
    "--speed",
    "--slowdown",
    "--seed",
    "--time-scale",
    "--busy",
    "--busy-prompt-tokens",
    "--busy-output-tokens",
    "--metrics-delay-ms",
    "--error-rate",
    "--error-status",
    "--drop-after-chunks",
    "--refuse-for-ms",
    "--response-delay-ms",
    "--drop-gauges",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Vllm,
    Sglang,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub host: IpAddr,
    pub port: u16,
    pub control_port: Option<u16>,
    pub model: String,
    pub loras: Vec<String>,
    pub replica_name: Option<String>,
    pub engine_kind: EngineKind,
    pub force_include_usage: bool,
    pub default_output_tokens: u32,
    pub engine: EngineConfig,
    pub time_scale: f64,
    pub busy: u32,
    pub busy_prompt_tokens: u32,
    pub busy_output_tokens: u32,
    pub faults: Faults,
}

/// What was wrong with the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    Help,
    UnknownFlag(String),
    MissingValue(String),
    BadValue {
        flag: String,
        value: String,
        expected: &'static str,
    },
    /// A fault flag's value was refused by its knob.
    BadFault {
        flag: String,
        message: String,
    },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Help => f.write_str("help requested"),
            CliError::UnknownFlag(flag) => write!(f, "unknown flag `{flag}` (see --help)"),
            CliError::MissingValue(flag) => write!(f, "flag `{flag}` needs a value"),
            CliError::BadValue { flag, value, expected } => {
                write!(f, "flag `{flag}`: `{value}` is not {expected}")
            }
            CliError::BadFault { flag, message } => write!(f, "flag `{flag}`: {message}"),
        }
    }
}

impl std::error::Error for CliError {}

fn parse_value<T: std::str::FromStr>(flag: &str, value: &str, expected: &'static str) -> Result<T, CliError> {
    value.parse().map_err(|_| CliError::BadValue {
        flag: flag.to_string(),
        value: value.to_string(),
        expected,
    })
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, CliError> {
    let mut host: IpAddr = IpAddr::from([127, 0, 0, 1]);
    let mut port = 8000u16;
    let mut control_port = None;
    let mut model = "meta-llama/Llama-3.1-8B-Instruct".to_string();
    let mut loras = Vec::new();
    let mut replica_name = None;
    let mut engine_kind = EngineKind::Vllm;
    let mut force_include_usage = false;
    let mut default_output_tokens = 200u32;
    let mut profile = EngineConfig::h100_llama3_8b();
    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut time_scale = 1.0f64;
    let mut busy = 0u32;
    let mut busy_prompt_tokens = 1000u32;
    let mut busy_output_tokens = 2000u32;
    let mut patch = FaultsPatch::default();

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        // Boolean flags take no value.
        match flag.as_str() {
            "-h" | "--help" => return Err(CliError::Help),
            "--force-include-usage" => {
                force_include_usage = true;
                continue;
            }
            "--no-prefix-caching" => {
                overrides.push((flag, "false".into()));
                continue;
            }
            "--metrics-hang" => {
                patch.metrics_hang = Some(true);
                continue;
            }
            "--metrics-garbage" => {
                patch.metrics_garbage = Some(true);
                continue;
            }
            "--metrics-frozen" => {
                patch.metrics_frozen = Some(true);
                continue;
            }
            "--refuse-connections" => {
                patch.refuse_connections = Some(true);
                continue;
            }
            "--completions-hang" => {
                patch.completions_hang = Some(true);
                continue;
            }
            _ => {}
        }
        if !VALUE_FLAGS.contains(&flag.as_str()) {
            return Err(CliError::UnknownFlag(flag));
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| CliError::MissingValue(flag.clone()))?,
        };
        let v = value.as_str();
        let f = flag.as_str();
        match f {
            "--host" => host = parse_value(f, v, "an IP address")?,
            "--port" => port = parse_value(f, v, "a port number")?,
            "--control-port" => control_port = Some(parse_value(f, v, "a port number")?),
            "--model" => model = value,
            "--lora" => loras.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from)),
            "--replica-name" => replica_name = Some(value),
            "--engine" => {
                engine_kind = match v {
                    "vllm" => EngineKind::Vllm,
                    "sglang" => EngineKind::Sglang,
                    _ => return Err(bad(f, v, "`vllm` or `sglang`")),
                }
            }
            "--default-output-tokens" => default_output_tokens = positive(f, v)?,
            "--profile" => {
                profile = match v {
                    "h100" => EngineConfig::h100_llama3_8b(),
                    "a100" => EngineConfig::a100_llama2_7b(),
                    _ => return Err(bad(f, v, "`h100` or `a100`")),
                }
            }
            "--max-num-batched-tokens"
            | "--max-num-seqs"
            | "--num-gpu-blocks"
            | "--block-size"
            | "--max-lora"
            | "--lora-kv-tokens"
            | "--api-overhead-ms"
            | "--step-jitter"
            | "--speed"
            | "--seed" => overrides.push((flag, value)),
            "--time-scale" => {
                time_scale = parse_value(f, v, "a positive number")?;
                if !(time_scale > 0.0 && time_scale.is_finite()) {
                    return Err(bad(f, v, "a positive number"));
                }
            }
            "--busy" => busy = parse_value(f, v, "a count")?,
            "--busy-prompt-tokens" => busy_prompt_tokens = positive(f, v)?,
            "--busy-output-tokens" => busy_output_tokens = positive(f, v)?,
            // Fault values are checked by their knob once the whole line is read.
            "--metrics-delay-ms" => patch.metrics_delay_ms = Some(parse_value(f, v, "milliseconds")?),
            "--error-rate" => patch.error_rate = Some(parse_value(f, v, "a fraction in [0, 1]")?),
            "--error-status" => patch.error_status = Some(parse_value(f, v, "an HTTP 5xx status")?),
            "--drop-after-chunks" => patch.drop_after_chunks = Some(parse_value(f, v, "a count")?),
            "--refuse-for-ms" => patch.refuse_for_ms = Some(parse_value(f, v, "milliseconds")?),
            "--response-delay-ms" => patch.response_delay_ms = Some(parse_value(f, v, "milliseconds")?),
            "--slowdown" => patch.slowdown = Some(parse_value(f, v, "a factor >= 1")?),
            "--drop-gauges" => patch
                .drop_gauges
                .get_or_insert_with(Vec::new)
                .extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from)),
            _ => return Err(CliError::UnknownFlag(flag)),
        }
    }
    // Overrides apply after the whole line is read, so `--num-gpu-blocks 100 --profile a100` keeps 100.
    let mut engine = profile;
    for (flag, value) in overrides {
        let (f, v) = (flag.as_str(), value.as_str());
        match f {
            "--max-num-batched-tokens" => engine.max_num_batched_tokens = positive(f, v)?,
            "--max-num-seqs" => engine.max_num_seqs = positive(f, v)?,
            "--num-gpu-blocks" => engine.num_gpu_blocks = positive(f, v)?,
            "--block-size" => engine.block_size = positive(f, v)?,
            "--max-lora" => engine.max_lora = parse_value(f, v, "a count")?,
            "--lora-kv-tokens" => engine.lora_kv_tokens = parse_value(f, v, "a token count")?,
            "--api-overhead-ms" => {
                let ms: f64 = parse_value(f, v, "milliseconds")?;
                if !(ms >= 0.0 && ms.is_finite()) {
                    return Err(bad(f, v, "milliseconds"));
                }
                engine.api_overhead_us = (ms * 1000.0).round() as u64;
            }
            "--step-jitter" => engine.step_jitter = parse_value(f, v, "a fraction in [0, 1)")?,
            "--speed" => engine.speed = parse_value(f, v, "a positive number")?,
            "--seed" => engine.seed = parse_value(f, v, "an unsigned integer")?,
            "--no-prefix-caching" => engine.enable_prefix_caching = false,
            _ => {}
        }
    }
    let mut faults = Faults::default();
    let families = metrics::families(engine_kind);
    let env = Env { now: Instant::now(), control_port: control_port.is_some(), metric_families: &families };
    faults.apply(patch, &env).map_err(|e| CliError::BadFault {
        flag: format!("--{}", e.knob.replace('_', "-")),
        message: e.message,
    })?;
    Ok(Options {
        host,
        port,
        control_port,
        model,
        loras,
        replica_name,
        engine_kind,
        force_include_usage,
        default_output_tokens,
        engine,
        time_scale,
        busy,
        busy_prompt_tokens,
        busy_output_tokens,
        faults,
    })
}

fn bad(flag: &str, value: &str, expected: &'static str) -> CliError {
    CliError::BadValue { flag: flag.to_string(), value: value.to_string(), expected }
}

fn positive(flag: &str, value: &str) -> Result<u32, CliError> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad(flag, value, "a positive integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults_are_loopback_h100_vllm() {
        let o = parse(args("")).unwrap();
        assert_eq!(o.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(o.engine, EngineConfig::h100_llama3_8b());
        assert_eq!(o.engine_kind, EngineKind::Vllm);
    }

    #[test]
    fn overrides_win_over_the_preset_wherever_they_appear() {
        let o = parse(args(
            "--num-gpu-blocks=100 --profile a100 --lora a,b --lora c --api-overhead-ms 5 --speed 0.5",
        ))
        .unwrap();
        assert_eq!(o.engine.num_gpu_blocks, 100);
        assert_eq!(o.engine.speed, 0.5);
        assert_eq!(o.engine.max_num_seqs, 256);
        assert_eq!(o.engine.api_overhead_us, 5000);
        assert_eq!(o.loras, vec!["a", "b", "c"]);
    }

    #[test]
    fn mistakes_name_the_flag() {
        assert_eq!(parse(args("--bogus 1")).unwrap_err().to_string(), "unknown flag `--bogus` (see --help)");
        assert_eq!(parse(args("--port")).unwrap_err().to_string(), "flag `--port` needs a value");
        assert_eq!(
            parse(args("--error-rate 2")).unwrap_err().to_string(),
            "flag `--error-rate`: `2` is not a fraction in [0, 1]"
        );
        assert_eq!(
            parse(args("--error-status 404")).unwrap_err().to_string(),
            "flag `--error-status`: `404` is not an HTTP 5xx status (500 to 599, e.g. 500 or 503)"
        );
        assert_eq!(
            parse(args("--error-status x")).unwrap_err().to_string(),
            "flag `--error-status`: `x` is not an HTTP 5xx status"
        );
        assert!(parse(args("--refuse-connections"))
            .unwrap_err()
            .to_string()
            .starts_with("flag `--refuse-connections`: needs --control-port"));
        assert!(parse(args("--drop-gauges sglang:token_usage"))
            .unwrap_err()
            .to_string()
            .starts_with("flag `--drop-gauges`: `sglang:token_usage` is not a metric family"));
        assert!(parse(args("--response-delay-ms 86400001"))
            .unwrap_err()
            .to_string()
            .starts_with("flag `--response-delay-ms`: `86400001` is not milliseconds"));
        assert_eq!(parse(args("--help")).unwrap_err(), CliError::Help);
        assert_eq!(parse(args("--bogus")).unwrap_err(), CliError::UnknownFlag("--bogus".into()));
    }

    #[test]
    fn fault_flags_set_their_knobs() {
        let o = parse(args(
            "--control-port 0 --refuse-connections --completions-hang --response-delay-ms 250 \
             --error-rate 0.5 --error-status 503 --drop-after-chunks 3 --metrics-delay-ms 7 --metrics-hang \
             --metrics-frozen --metrics-garbage --drop-gauges vllm:kv_cache_usage_perc \
             --engine vllm --drop-gauges=vllm:num_requests_waiting,vllm:num_requests_running --slowdown 3",
        ))
        .unwrap();
        assert_eq!(o.control_port, Some(0));
        let f = o.faults;
        assert!(f.refuse_connections && f.refuse_until.is_none());
        assert!(f.completions_hang && f.metrics_hang && f.metrics_frozen && f.metrics_garbage);
        assert_eq!(f.slowdown, 3.0);
        assert_eq!((f.response_delay_ms, f.error_rate, f.error_status), (250, 0.5, 503));
        assert_eq!((f.drop_after_chunks, f.metrics_delay_ms), (3, 7));
        assert_eq!(
            f.drop_gauges,
            ["vllm:kv_cache_usage_perc", "vllm:num_requests_waiting", "vllm:num_requests_running"]
        );
        let timed = parse(args("--refuse-for-ms 500")).unwrap().faults;
        assert!(timed.refuse_connections && timed.refuse_until.is_some());
        assert_eq!(timed.refuse_for_ms, 500);
        // The engine named later decides which families exist.
        assert!(parse(args("--drop-gauges sglang:token_usage --engine sglang")).is_ok());
    }

    #[test]
    fn help_mentions_every_flag_the_parser_knows() {
        for flag in [
            "--host",
            "--port",
            "--control-port",
            "--model",
            "--lora",
            "--replica-name",
            "--engine",
            "--force-include-usage",
            "--default-output-tokens",
            "--profile",
            "--max-num-batched-tokens",
            "--max-num-seqs",
            "--num-gpu-blocks",
            "--block-size",
            "--max-lora",
            "--lora-kv-tokens",
            "--no-prefix-caching",
            "--api-overhead-ms",
            "--step-jitter",
            "--time-scale",
            "--seed",
            "--busy",
            "--busy-prompt-tokens",
            "--busy-output-tokens",
            "--metrics-delay-ms",
            "--metrics-hang",
            "--metrics-garbage",
            "--error-rate",
            "--drop-after-chunks",
        ] {
            assert!(HELP.contains(flag), "{flag}");
        }
        for knob in super::super::faults::KNOBS {
            let flag = format!("--{} ", knob.replace('_', "-"));
            assert!(HELP.contains(&flag), "{flag}");
        }
    }
}
