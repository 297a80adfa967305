//! One wasmtime `Engine` per process and each module compiled once per path: compiling a filter takes far
//! longer than a test, so tests share the compiled code (never any state). Compiled code is also kept on
//! disk under `target/wasmtime-cache`, because nextest runs every test in its own process.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use super::imports;
use super::vm::VmState;
use super::StartError;

pub(crate) struct CompiledModule {
    pub pre: InstancePre<VmState>,
    /// Imports the host does not implement (`module::name`); calling one answers UNIMPLEMENTED.
    pub stubbed_imports: Vec<String>,
}

type CacheKey = (PathBuf, Option<SystemTime>, u64);

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let config = Config::new();
        Engine::new(&config).unwrap_or_else(|_| Engine::default())
    })
}

/// The compiled module for `path`, compiling it on first use (or when the file changed).
pub(crate) fn load(path: &Path) -> Result<Arc<CompiledModule>, StartError> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Arc<CompiledModule>>>> = OnceLock::new();
    let meta = std::fs::metadata(path)
        .map_err(|e| StartError::Load { path: path.to_path_buf(), reason: e.to_string() })?;
    let key = (path.to_path_buf(), meta.modified().ok(), meta.len());
    // Held while compiling so parallel tests wait for one compile instead of doing their own.
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache.get(&key) {
        return Ok(m.clone());
    }
    let engine = engine();
    let load_err =
        |e: wasmtime::Error| StartError::Load { path: path.to_path_buf(), reason: format!("{e:#}") };
    let bytes = std::fs::read(path)
        .map_err(|e| StartError::Load { path: path.to_path_buf(), reason: e.to_string() })?;
    let module = compile_or_reuse(engine, &bytes).map_err(load_err)?;
    let mut linker: Linker<VmState> = Linker::new(engine);
    imports::define_all(&mut linker).map_err(load_err)?;
    let stubbed_imports = imports::stub_missing(&mut linker, &module).map_err(load_err)?;
    let pre = linker.instantiate_pre(&module).map_err(load_err)?;
    let compiled = Arc::new(CompiledModule { pre, stubbed_imports });
    cache.insert(key, compiled.clone());
    Ok(compiled)
}

/// Compiles `wasm`, or loads the code an earlier process compiled from the same bytes with a compatible
/// engine.
fn compile_or_reuse(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Module> {
    let mut hasher = DefaultHasher::new();
    wasm.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let dir = crate::workspace_root().join("target/wasmtime-cache");
    let file = dir.join(format!("{:016x}.cwasm", hasher.finish()));
    // One process compiles while the others wait, then they all load its result.
    let _guard = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::File::create(dir.join(format!("{:016x}.lock", hasher.finish()))))
        .and_then(|f| f.lock().map(|()| f))
        .ok();
    if file.exists() {
        // SAFETY: the file was written by `Module::serialize` below, keyed by the hash of the source bytes
        // and of the engine's settings; wasmtime still checks its version and configuration header.
        if let Ok(module) = unsafe { Module::deserialize_file(engine, &file) } {
            return Ok(module);
        }
    }
    let module = Module::new(engine, wasm)?;
    if let Ok(code) = module.serialize() {
        // Written under a unique name then renamed, so a parallel process never reads half a file.
        let tmp = dir.join(format!("{}.{}.tmp", std::process::id(), hasher.finish()));
        let stored = std::fs::write(&tmp, code).and_then(|()| std::fs::rename(&tmp, &file));
        if stored.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(module)
}
