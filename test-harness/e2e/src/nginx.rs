//! NGINX with njs for end-to-end tests: the real `nginx` (Debian's `nginx-light`) and its njs module
//! (`libnginx-mod-http-js`), on a loopback port with a private prefix, one process (`master_process
//! off`, so stopping it by its PID stops everything), running `envoy-config/nginx/nginx.conf`.

use super::process::Process;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Where Debian's njs package puts the module `nginx.conf` loads.
pub const NJS_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_js_module.so";

/// The `nginx` executable (`$NGINX_BIN`, on `PATH`, or `/usr/sbin/nginx`), when it and the njs module
/// are installed (`cargo xtask test` installs both).
pub fn nginx_binary() -> Option<PathBuf> {
    if !std::path::Path::new(NJS_MODULE).is_file() {
        return None;
    }
    if let Some(bin) = std::env::var_os("NGINX_BIN") {
        return Some(PathBuf::from(bin));
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("nginx")).find(|p| p.is_file()));
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
}

/// What fills `nginx.conf`'s placeholders.
#[derive(Clone, Debug)]
pub struct NginxOptions {
    /// `ip:port` of `epp-shim --pick-port` (loopback).
    pub pick: String,
    /// Every pod (`ip:port`): the FailOpen upstream.
    pub pool: Vec<String>,
    /// `FailOpen` or `FailClose`.
    pub failure_mode: String,
}

/// One running NGINX; stopped (by its PID) when dropped, its prefix removed.
pub struct Nginx {
    process: Process,
    prefix: PathBuf,
    addr: String,
}

impl Nginx {
    /// Renders `envoy-config/nginx/nginx.conf` into a fresh prefix and starts NGINX on a free loopback
    /// port, waiting up to 20 s until it accepts connections. NGINX cannot bind port 0 and say which it
    /// got, so a free port is chosen first; a start that lost the port to another process is retried.
    pub fn start(options: &NginxOptions) -> Result<Nginx, String> {
        let bin =
            nginx_binary().ok_or("no nginx with njs (apt-get install nginx-light libnginx-mod-http-js)")?;
        let root = crate::workspace_root();
        let template_path = root.join("envoy-config/nginx/nginx.conf");
        let template = std::fs::read_to_string(&template_path)
            .map_err(|e| format!("cannot read {}: {e}", template_path.display()))?;
        let pick_port = options.pick.rsplit_once(':').map_or("", |(_, p)| p).to_string();
        let servers: String = options.pool.iter().map(|a| format!("server {a}; ")).collect();
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let text = crate::template::render(
                &template,
                &[
                    ("PORT_LISTENER", port.to_string()),
                    ("PORT_PICK", pick_port.clone()),
                    ("POOL_SERVERS", servers.clone()),
                    ("FAILURE_MODE", options.failure_mode.clone()),
                    ("NJS_DIR", root.join("envoy-config/nginx").display().to_string()),
                ],
            )
            .map_err(|e| format!("nginx.conf: {e}"))?;
            let prefix = crate::process::scratch_path("nginx", "prefix")?;
            std::fs::create_dir_all(&prefix)
                .map_err(|e| format!("cannot create {}: {e}", prefix.display()))?;
            let conf = prefix.join("nginx.conf");
            std::fs::write(&conf, text).map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
            let mut cmd = Command::new(&bin);
            cmd.arg("-p")
                .arg(&prefix)
                .args(["-e", "stderr", "-g", "daemon off; master_process off;", "-c"])
                .arg(&conf);
            let mut process = Process::spawn("nginx", cmd)?;
            let addr = format!("127.0.0.1:{port}");
            let up = process.wait_for("a listening port", Duration::from_secs(20), |_| {
                TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(200)).ok().map(|_| ())
            });
            match up {
                Ok(()) => return Ok(Nginx { process, prefix, addr }),
                Err(e) if e.contains("Address already in use") => {
                    last_error = e;
                    let _ = std::fs::remove_dir_all(&prefix);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    /// `127.0.0.1:PORT`, where clients connect.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn process(&self) -> &Process {
        &self.process
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Its temp files and pid file; the process itself is killed by its own drop, just after.
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("no free loopback port: {e}"))
}
