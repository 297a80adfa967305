//! A spawned server that cannot outlive its test: killed on drop (also while a failing test unwinds) and,
//! through the kernel's parent-death signal, even when the test process itself is killed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process whose stdout and stderr go to a log file under `target/e2e-logs/` (kept only when
/// the test fails).
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` with its output appended to `target/e2e-logs/<name>-<n>.log`.
    ///
    /// The child gets SIGKILL when the thread that spawned it exits (Linux parent-death signal), so start
    /// processes on the test's own thread, not on a helper thread that ends early.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Process, String> {
        let log = log_path(name)?;
        let out = File::create(&log).map_err(|e| format!("{name}: cannot create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{name}: cannot share the log file: {e}"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("{name}: cannot start {:?}: {e}", cmd.get_program()))?;
        Ok(Process { name: name.to_string(), child, log })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id (for `/proc/<pid>/…` readings such as CPU time and RSS).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `ready` every 20 ms until it yields a value, the process dies, or `timeout` passes; errors
    /// carry the end of the log.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Process) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = ready(self) {
                return Ok(v);
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before {what}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(30)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: no {what} within {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test keeps the log and shows its end; a passing one leaves nothing behind.
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}), last lines:\n{}\n---",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

fn log_path(name: &str) -> Result<PathBuf, String> {
    scratch_path(name, "log")
}

/// A fresh `target/e2e-logs/<name>-<pid>-<n>.<extension>` (the directory created if needed).
pub(crate) fn scratch_path(name: &str, extension: &str) -> Result<PathBuf, String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = crate::workspace_root().join("target/e2e-logs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!("{name}-{}-{n}.{extension}", std::process::id())))
}
