//! A real Envoy for end-to-end tests: a config from `envoy-config/` with its placeholders filled, ports
//! picked by Envoy itself (port 0, read back from the admin API), ready when the admin says LIVE.

use super::http::{Request, Response};
use super::process::Process;
use super::template;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `$ENVOY_BIN`, else the project-local `.venv/bin/envoy` that `cargo xtask test` installs; `None` when
/// neither exists (tests then skip with a notice).
pub fn envoy_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(path));
    }
    let venv = crate::workspace_root().join(".venv/bin/envoy");
    venv.exists().then_some(venv)
}

/// The picker filter (`filter/`, crate `epp-filter`) built for `wasm32-wasip1`. Same command and target
/// dir as xtask's validation build, so they share it.
pub fn filter_wasm() -> Result<PathBuf, String> {
    let root = crate::workspace_root();
    crate::build_wasm_crate(&root.join("filter/Cargo.toml"), "epp_filter", &root.join("target/filter-wasm"))
}

/// A bootstrap with `{{NAME}}` placeholders (see envoy-config/README.md) and the values chosen so far.
#[derive(Clone, Debug)]
pub struct EnvoyTemplate {
    name: String,
    text: String,
    values: Vec<(String, String)>,
}

impl EnvoyTemplate {
    /// A file under `envoy-config/`, e.g. `"wasm-picker/envoy.yaml"`.
    pub fn load(relative: &str) -> Result<EnvoyTemplate, String> {
        let path = crate::workspace_root().join("envoy-config").join(relative);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(EnvoyTemplate::inline(relative.trim_end_matches("/envoy.yaml"), &text))
    }

    /// A config written by the test itself.
    pub fn inline(name: &str, text: &str) -> EnvoyTemplate {
        let name = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        EnvoyTemplate { name, text: text.to_string(), values: Vec::new() }
    }

    /// Sets `{{name}}` to `value` verbatim.
    pub fn set(mut self, name: &str, value: impl Into<String>) -> EnvoyTemplate {
        self.values.retain(|(k, _)| k != name);
        self.values.push((name.to_string(), value.into()));
        self
    }

    /// `{{WASM_PATH}}`.
    pub fn wasm(self, path: &Path) -> EnvoyTemplate {
        self.set("WASM_PATH", path.display().to_string())
    }

    /// `{{GATEWAY_CONFIG}}`: the filter's JSON configuration, quoted as a YAML string.
    pub fn gateway_config(self, json: &str) -> EnvoyTemplate {
        self.set("GATEWAY_CONFIG", yaml_quote(json))
    }

    /// `{{POOL_LB_ENDPOINTS}}`: the pool members (`ip:port`) as a YAML list of `lb_endpoints`.
    pub fn pool_endpoints(self, addrs: &[&str]) -> EnvoyTemplate {
        let items: Vec<String> = addrs
            .iter()
            .map(|a| {
                let (ip, port) = a.rsplit_once(':').unwrap_or((a, "0"));
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                format!("{{endpoint: {{address: {{socket_address: {{address: \"{ip}\", port_value: {port}}}}}}}}}")
            })
            .collect();
        self.set("POOL_LB_ENDPOINTS", format!("[{}]", items.join(", ")))
    }

    /// The names this file needs.
    pub fn placeholders(&self) -> Vec<String> {
        template::placeholders(&self.text)
    }

    /// The final text. `{{PORT_LISTENER}}` and `{{PORT_ADMIN}}` default to 0 (Envoy picks; [`Envoy`]
    /// reads the ports back); any other missing value is an error naming it.
    pub fn render(&self) -> Result<String, String> {
        let mut values: Vec<(&str, String)> =
            self.values.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        for port in ["PORT_LISTENER", "PORT_ADMIN"] {
            if !values.iter().any(|(k, _)| *k == port) {
                values.push((port, String::from("0")));
            }
        }
        template::render(&self.text, &values).map_err(|e| format!("{}: {e}", self.name))
    }
}

/// A JSON string literal, which YAML reads as a double-quoted scalar with the same escapes.
fn yaml_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// How to run Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Worker threads (`--concurrency`).
    pub concurrency: usize,
    /// `--log-level`.
    pub log_level: String,
    /// How long startup (including compiling the Wasm module) may take.
    pub ready_timeout: Duration,
    pub extra_args: Vec<String>,
}

impl Default for EnvoyOptions {
    fn default() -> EnvoyOptions {
        EnvoyOptions {
            concurrency: 1,
            log_level: String::from("info"),
            ready_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
        }
    }
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    process: Process,
    admin: String,
    listeners: Vec<(String, String)>,
    /// The rendered config and the admin address file, removed with a passing test's log.
    files: [PathBuf; 2],
}

impl Envoy {
    /// Renders `template`, starts Envoy and waits until the admin API answers `/ready` with LIVE.
    pub fn start(template: &EnvoyTemplate, options: &EnvoyOptions) -> Result<Envoy, String> {
        let binary = envoy_binary().ok_or_else(|| {
            String::from(
                "no Envoy: run `cargo xtask envoy-check` to install it into .venv/ (or set ENVOY_BIN)",
            )
        })?;
        let config = template.render()?;
        let dir = crate::workspace_root().join("target/e2e-logs");
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let stem = format!("envoy-{}-{}-{}", template.name, std::process::id(), unique());
        let config_path = dir.join(format!("{stem}.yaml"));
        let admin_path = dir.join(format!("{stem}.admin"));
        std::fs::write(&config_path, config)
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let _ = std::fs::remove_file(&admin_path);

        let mut cmd = Command::new(binary);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", &options.concurrency.to_string()])
            .args(["--log-level", &options.log_level])
            // Several Envoys run side by side in one test run; hot restart would make them share memory.
            .arg("--disable-hot-restart")
            .args(&options.extra_args);
        let mut process = Process::spawn(&format!("envoy-{}", template.name), cmd)?;

        let admin = process.wait_for("the admin address", options.ready_timeout, |_| {
            let text = std::fs::read_to_string(&admin_path).ok()?;
            let addr = text.trim().to_string();
            (!addr.is_empty()).then_some(addr)
        })?;
        process.wait_for("/ready = LIVE", options.ready_timeout, |_| {
            let r = Request::get("/ready").timeout(Duration::from_secs(2)).send(&admin).ok()?;
            (r.status == 200 && r.text().trim() == "LIVE").then_some(())
        })?;
        let listing = Request::get("/listeners").timeout(Duration::from_secs(5)).send(&admin)?.text();
        // One line per listener: `name::ip:port`.
        let listeners = listing
            .lines()
            .filter_map(|l| l.split_once("::"))
            .map(|(name, addr)| (name.to_string(), addr.trim().to_string()))
            .collect();
        Ok(Envoy { process, admin, listeners, files: [config_path, admin_path] })
    }

    /// The address of the first listener (the gateway in every envoy-config file).
    pub fn listener(&self) -> &str {
        self.listeners.first().map_or("", |(_, a)| a.as_str())
    }

    pub fn listener_named(&self, name: &str) -> Option<&str> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| a.as_str())
    }

    pub fn admin(&self) -> &str {
        &self.admin
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Sends `request` to the gateway listener.
    pub fn send(&self, request: &Request) -> Result<Response, String> {
        request.send(self.listener())
    }

    /// A counter or gauge from the admin `/stats` (e.g. `cluster.pool.upstream_rq_total`); `None` when
    /// Envoy does not have it.
    /// Sum of every counter or gauge whose name matches the admin `filter` regex (e.g. one stat across
    /// listeners whose names depend on the bound address).
    pub fn stat_sum(&self, filter: &str) -> Option<u64> {
        let r = Request::get(&format!("/stats?filter={filter}"))
            .timeout(Duration::from_secs(5))
            .send(&self.admin);
        let text = r.ok()?.text();
        Some(text.lines().filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok()).sum())
    }

    /// Requests each host of `cluster` has served (admin `/clusters`, `rq_total`), hosts in the order
    /// Envoy lists them; `None` when the admin does not answer.
    pub fn host_requests(&self, cluster: &str) -> Option<Vec<(String, u64)>> {
        let r = Request::get("/clusters").timeout(Duration::from_secs(5)).send(&self.admin);
        let text = r.ok()?.text();
        let prefix = format!("{cluster}::");
        let hosts = text
            .lines()
            .filter_map(|l| {
                let (host, count) = l.strip_prefix(&prefix)?.split_once("::rq_total::")?;
                Some((host.to_string(), count.trim().parse().ok()?))
            })
            .collect();
        Some(hosts)
    }

    pub fn stat(&self, name: &str) -> Option<u64> {
        let r = Request::get(&format!("/stats?filter=^{name}$"))
            .timeout(Duration::from_secs(5))
            .send(&self.admin);
        let text = r.ok()?.text();
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            for f in &self.files {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

fn unique() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
