//! `cargo xtask image`: the filter as an OCI image layout directory, in the two formats Istio's and Envoy
//! Gateway's Wasm fetchers accept (docs/deploy/oci-image.md), written without Docker and reproducibly: the
//! same `.wasm` bytes always give the same blobs and so the same manifest digest, which is what a WasmPlugin
//! or EnvoyExtensionPolicy pins. `--verify` is the `cargo xtask test` step: a real registry round trip.

use crate::cmd::{step, target_dir, workspace_root};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cargo xtask image [--format compat|oci|both] [--out DIR] [--tag NAME:TAG] [--wasm FILE]
       cargo xtask image --verify

  --format  compat: one tar+gzip layer holding plugin.wasm; oci: the raw module as a Wasm artifact
            layer; both (default). Istio and Envoy Gateway accept either.
  --out     where the layouts go, one directory per format (default target/oci-image)
  --tag     the name and tag to print and record in index.json (default epp-filter:<filter version>)
  --wasm    package this module instead of building the filter
  --verify  build twice (same digests?), push both formats to a local registry (Debian's
            docker-registry) with skopeo, pull them back by digest and compare the module byte for byte
";

// Media types, from the fetchers' code (docs/deploy/oci-image.md).
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const WASM_CONTENT_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
const WASM_RUNTIME_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// The file name the compat fetchers look for in the layer's tar.
const PLUGIN_FILE: &str = "plugin.wasm";
/// The Solo runtime config: the target runtime and the root ids the module answers to. The fetchers do
/// not read it; it documents the module for people and tools that do.
const RUNTIME_CONFIG: &str =
    r#"{"type":"envoy_proxy","abiVersions":["v0.2.1"],"config":{"root_ids":["picker","collector"]}}"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The "compat" variant: an ordinary single-layer image whose tar+gzip layer holds `plugin.wasm`.
    Compat,
    /// The "oci" variant: two raw layers, the module and its runtime config, with Wasm media types.
    Oci,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Compat => "compat",
            Format::Oci => "oci",
        }
    }
}

/// One image layout written to disk.
pub struct Layout {
    pub format: Format,
    pub dir: PathBuf,
    /// `sha256:<hex>` of the manifest: what `@sha256:` in an image reference names.
    pub manifest_digest: String,
}

struct Options {
    formats: Vec<Format>,
    out: PathBuf,
    name: String,
    tag: String,
    wasm: Option<PathBuf>,
}

pub fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return Ok(());
    }
    if args.iter().any(|a| a == "--verify") {
        if args.len() > 1 {
            return Err(format!("`cargo xtask image --verify` takes no other arguments\n\n{USAGE}"));
        }
        return verify();
    }
    let options = parse_args(args)?;
    let wasm_path = match &options.wasm {
        Some(path) => path.clone(),
        None => {
            crate::tools::ensure_wasm_target()?;
            crate::envoy::build_filter()?
        }
    };
    let wasm = read_module(&wasm_path)?;
    eprintln!(
        "\n==> OCI image of {} ({} bytes, sha256:{})",
        wasm_path.display(),
        wasm.len(),
        sha256_hex(&wasm)
    );
    for &format in &options.formats {
        let layout = write_layout(format, &wasm, &options.tag, &options.out.join(format.name()))?;
        let dir = layout.dir.display();
        let (name, tag, digest) = (&options.name, &options.tag, &layout.manifest_digest);
        println!("{:<7} {dir}", format.name());
        println!("        manifest {digest}");
        // Both layouts carry the same tag; in a registry the oci variant gets its own.
        let remote_tag = match format {
            Format::Compat => tag.clone(),
            Format::Oci => format!("{tag}-oci"),
        };
        println!("        push:  skopeo copy oci:{dir}:{tag} docker://REGISTRY/{name}:{remote_tag}");
        println!("        pin:   oci://REGISTRY/{name}@{digest}");
    }
    Ok(())
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let version = filter_version()?;
    let mut options = Options {
        formats: vec![Format::Compat, Format::Oci],
        out: target_dir().join("oci-image"),
        name: String::from("epp-filter"),
        tag: version,
        wasm: None,
    };
    let mut args = args.iter().filter(|a| a.as_str() != "--");
    while let Some(flag) = args.next() {
        let mut value = || args.next().cloned().ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"));
        match flag.as_str() {
            "--format" => {
                options.formats = match value()?.as_str() {
                    "compat" => vec![Format::Compat],
                    "oci" => vec![Format::Oci],
                    "both" => vec![Format::Compat, Format::Oci],
                    other => return Err(format!("--format: expected compat, oci or both, got {other:?}")),
                }
            }
            "--out" => options.out = PathBuf::from(value()?),
            "--tag" => {
                let v = value()?;
                let (name, tag) = v
                    .rsplit_once(':')
                    .ok_or_else(|| format!("--tag: expected NAME:TAG (e.g. epp-filter:0.1.0), got {v:?}"))?;
                check_name(name)?;
                check_tag(tag)?;
                (options.name, options.tag) = (name.to_string(), tag.to_string());
            }
            "--wasm" => options.wasm = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(options)
}

/// The OCI distribution spec's repository name grammar (lowercase path components).
fn check_name(name: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if name.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "--tag: the name {name:?} is not a repository name (lowercase letters, digits and . _ - in \
             components separated by /, each starting and ending with a letter or digit)"
        ))
    }
}

/// The OCI distribution spec's tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&tag.len())
        && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--tag: the tag {tag:?} is not a valid tag (1 to 128 of letters, digits and . _ -, not starting \
             with . or -)"
        ))
    }
}

/// The filter crate's version (its `Cargo.toml`), the default tag.
fn filter_version() -> Result<String, String> {
    let manifest = workspace_root().join("filter/Cargo.toml");
    let text =
        std::fs::read_to_string(&manifest).map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("version = \"")?.strip_suffix('"').map(str::to_string))
        .ok_or_else(|| format!("{} has no `version = \"...\"` line", manifest.display()))
}

fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let wasm = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // What both fetchers check before they hand the module to Envoy.
    if !wasm.starts_with(b"\0asm") || wasm.len() < 8 {
        return Err(format!("{} is not a Wasm module (no \\0asm header)", path.display()));
    }
    Ok(wasm)
}

/// Writes the OCI image layout for `format` into `dir` (replacing an earlier layout there) and returns its
/// manifest digest. Every byte is a function of `wasm`, `format` and `tag`.
pub fn write_layout(format: Format, wasm: &[u8], tag: &str, dir: &Path) -> Result<Layout, String> {
    check_tag(tag)?;
    clear_layout_dir(dir)?;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| format!("cannot create {}: {e}", blobs.display()))?;
    let put = |blob: &[u8]| -> Result<String, String> {
        let hex = sha256_hex(blob);
        let path = blobs.join(&hex);
        std::fs::write(&path, blob).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(format!("sha256:{hex}"))
    };
    let manifest = match format {
        Format::Compat => {
            let tar = tar_one_file(PLUGIN_FILE, wasm)?;
            let layer = gzip(&tar)?;
            // The image config: the platform, and the layer's uncompressed digest (no dates, no history).
            let config = format!(
                r#"{{"architecture":"wasm","os":"wasip1","rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
                sha256_hex(&tar)
            );
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}],"annotations":{{"module.wasm.image/variant":"compat"}}}}"#,
                descriptor(OCI_CONFIG, &put(config.as_bytes())?, config.len(), None),
                descriptor(OCI_LAYER_TAR_GZIP, &put(&layer)?, layer.len(), None),
            )
        }
        Format::Oci => {
            let config = RUNTIME_CONFIG.as_bytes();
            let config_digest = put(config)?;
            // The runtime config is both the manifest's config and one of the two layers the fetchers
            // require; the module is the other, uncompressed.
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{},{}]}}"#,
                descriptor(WASM_RUNTIME_CONFIG, &config_digest, config.len(), None),
                descriptor(WASM_RUNTIME_CONFIG, &config_digest, config.len(), Some("runtime-config.json")),
                descriptor(WASM_CONTENT_LAYER, &put(wasm)?, wasm.len(), Some(PLUGIN_FILE)),
            )
        }
    };
    let manifest_digest = put(manifest.as_bytes())?;
    // skopeo's `oci:DIR:TAG` finds the manifest by this annotation.
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
        manifest.len()
    );
    write_file(&dir.join("index.json"), index.as_bytes())?;
    write_file(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Layout { format, dir: dir.to_path_buf(), manifest_digest })
}

fn descriptor(media_type: &str, digest: &str, size: usize, title: Option<&str>) -> String {
    let annotations = title
        .map(|t| format!(r#","annotations":{{"org.opencontainers.image.title":"{t}"}}"#))
        .unwrap_or_default();
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}{annotations}}}"#)
}

/// Removes a layout this command wrote earlier, so no stale blob stays; refuses to touch a non-empty
/// directory that is not an image layout.
fn clear_layout_dir(dir: &Path) -> Result<(), String> {
    let Ok(mut entries) = std::fs::read_dir(dir) else { return Ok(()) };
    if entries.next().is_none() {
        return Ok(());
    }
    if !dir.join("oci-layout").is_file() {
        return Err(format!(
            "{} exists and is not an OCI image layout; choose another --out or remove it",
            dir.display()
        ));
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("cannot remove the old layout {}: {e}", dir.display()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A POSIX ustar archive holding one regular file: owner 0:0, mode 0644, mtime 0, no user or group names,
/// so the bytes depend on the name and contents alone.
fn tar_one_file(name: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    const BLOCK: usize = 512;
    if name.len() > 99 {
        return Err(format!("tar: file name {name:?} is longer than 99 bytes"));
    }
    let mut header = [0u8; BLOCK];
    let mut field = |offset: usize, value: &[u8]| header[offset..offset + value.len()].copy_from_slice(value);
    field(0, name.as_bytes());
    field(100, b"0000644\0"); // mode
    field(108, b"0000000\0"); // uid
    field(116, b"0000000\0"); // gid
    field(124, format!("{:011o}\0", data.len()).as_bytes()); // size (11 octal digits: up to 8 GiB)
    field(136, b"00000000000\0"); // mtime
    field(148, b"        "); // checksum, counted as spaces
    field(156, b"0"); // regular file
    field(257, b"ustar\0"); // magic
    field(263, b"00"); // version
    let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    let padding = (BLOCK - data.len() % BLOCK) % BLOCK;
    let mut tar = Vec::with_capacity(BLOCK + data.len() + padding + 2 * BLOCK);
    tar.extend_from_slice(&header);
    tar.extend_from_slice(data);
    // The data padded to a whole block, then the two zero blocks that end an archive.
    tar.resize(tar.len() + padding + 2 * BLOCK, 0);
    Ok(tar)
}

/// gzip with a fixed header: mtime 0, no file name, OS "unknown", maximum compression.
fn gzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).and_then(|()| encoder.finish()).map_err(|e| format!("gzip: {e}"))
}

// ---- `--verify`: the round trip through a real registry ------------------------------------------------

/// The `cargo xtask test` step: builds the filter, writes both layouts twice (same digests?), pushes them
/// to Debian's `docker-registry` on a loopback port with skopeo, pulls them back by digest and checks
/// that the module the fetchers would extract is byte-identical to the build. Also checks that the
/// Kubernetes manifests pin the image by digest.
pub fn verify() -> Result<(), String> {
    check_manifests_pin_digests()?;
    crate::tools::ensure_wasm_target()?;
    let wasm = read_module(&crate::envoy::build_filter()?)?;
    check_no_machine_paths(&wasm)?;
    ensure_packages()?;
    let work = target_dir().join("oci-image-verify");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| format!("cannot remove {}: {e}", work.display()))?;
    }
    let tag = "verify";
    let mut built = Vec::new();
    for format in [Format::Compat, Format::Oci] {
        let first = write_layout(format, &wasm, tag, &work.join(format!("{}-1", format.name())))?;
        let second = write_layout(format, &wasm, tag, &work.join(format!("{}-2", format.name())))?;
        if first.manifest_digest != second.manifest_digest {
            return Err(format!(
                "{} image is not reproducible: the same module gave {} and then {}",
                format.name(),
                first.manifest_digest,
                second.manifest_digest
            ));
        }
        eprintln!("    {}: {} (twice)", format.name(), first.manifest_digest);
        built.push(first);
    }
    let registry = Registry::start(&work.join("registry"))?;
    let result = built.iter().try_for_each(|layout| roundtrip(layout, &wasm, &registry, &work));
    drop(registry);
    result?;
    eprintln!("    both formats pushed, pulled back by digest and unpacked to the same {} bytes", wasm.len());
    Ok(())
}

/// The same source must give the same module on another machine, so the module may not name where this
/// one keeps crates or the checkout (`tools::reproducible_wasm_env` remaps the first).
fn check_no_machine_paths(wasm: &[u8]) -> Result<(), String> {
    let paths = [crate::tools::cargo_home(), Some(crate::cmd::workspace_root())];
    for path in paths.into_iter().flatten() {
        let text = path.to_string_lossy();
        if text.len() > 1 && wasm.windows(text.len()).any(|w| w == text.as_bytes()) {
            return Err(format!(
                "the module names this machine's {text}: its bytes (and the image digest) would differ \
                 on another machine"
            ));
        }
    }
    eprintln!("    the module names no path of this machine (cargo home, checkout)");
    Ok(())
}

fn roundtrip(layout: &Layout, wasm: &[u8], registry: &Registry, work: &Path) -> Result<(), String> {
    let name = format!("127.0.0.1:{}/epp-filter", registry.port);
    let format = layout.format.name();
    // --preserve-digests: fail rather than let skopeo recompress a layer or rewrite the manifest.
    step(
        &format!("push the {format} image"),
        skopeo()
            .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:verify", layout.dir.display()))
            .arg(format!("docker://{name}:{format}")),
    )?;
    let pulled = work.join(format!("{format}-pulled"));
    // By digest, as a pinned WasmPlugin or EnvoyExtensionPolicy pulls it.
    step(
        &format!("pull the {format} image back"),
        skopeo()
            .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
            .arg(format!("docker://{name}@{}", layout.manifest_digest))
            .arg(format!("oci:{}:pulled", pulled.display())),
    )?;
    let index = read_json(&pulled.join("index.json"))?;
    let digest = index["manifests"][0]["digest"].as_str().unwrap_or_default();
    if digest != layout.manifest_digest {
        return Err(format!("{format}: pulled manifest {digest}, pushed {}", layout.manifest_digest));
    }
    let module = extract_module(layout.format, &pulled, digest)?;
    if module != wasm {
        return Err(format!(
            "{format}: the module pulled back ({} bytes, sha256:{}) differs from the build ({} bytes, sha256:{})",
            module.len(),
            sha256_hex(&module),
            wasm.len(),
            sha256_hex(wasm)
        ));
    }
    eprintln!("    {format}: pulled {digest}, module identical");
    Ok(())
}

/// The module as the fetchers find it: compat takes the last layer, which must be OCI tar+gzip, and the
/// file named plugin.wasm in it (unpacked here with the system's tar, not our writer's reader); oci needs
/// exactly two layers and takes the one with the Wasm content media type, raw.
fn extract_module(format: Format, layout: &Path, manifest_digest: &str) -> Result<Vec<u8>, String> {
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifest = read_json(&blob(manifest_digest))?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let media_type = |l: &serde_json::Value| l["mediaType"].as_str().unwrap_or_default().to_string();
    let digest = |l: &serde_json::Value| l["digest"].as_str().unwrap_or_default().to_string();
    match format {
        Format::Compat => {
            let last = layers.last().ok_or("compat: the manifest has no layers")?;
            if media_type(last) != OCI_LAYER_TAR_GZIP {
                return Err(format!(
                    "compat: last layer is {}, expected {OCI_LAYER_TAR_GZIP}",
                    media_type(last)
                ));
            }
            let out = Command::new("tar")
                .arg("-xzOf")
                .arg(blob(&digest(last)))
                .arg(PLUGIN_FILE)
                .output()
                .map_err(|e| format!("cannot run tar: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "compat: tar could not extract {PLUGIN_FILE}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(out.stdout)
        }
        Format::Oci => {
            if layers.len() != 2 {
                return Err(format!("oci: {} layers, the fetchers require exactly 2", layers.len()));
            }
            let layer = layers
                .iter()
                .find(|l| media_type(l) == WASM_CONTENT_LAYER)
                .ok_or_else(|| format!("oci: no layer of type {WASM_CONTENT_LAYER}"))?;
            let path = blob(&digest(layer));
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// The gateway manifests must name the image by digest, not by a tag that can move.
fn check_manifests_pin_digests() -> Result<(), String> {
    let root = workspace_root();
    for rel in [
        "envoy-config/kubernetes/istio-wasmplugin.yaml",
        "envoy-config/kubernetes/envoy-gateway-extensionpolicy.yaml",
        "envoy-config/kubernetes/two-models.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(rel)).map_err(|e| format!("cannot read {rel}: {e}"))?;
        let urls: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("url:"))
            .map(str::trim)
            .filter(|u| u.starts_with("oci://"))
            .collect();
        if urls.is_empty() {
            return Err(format!("{rel}: no `url: oci://...` line"));
        }
        for url in urls {
            let pinned = url.rsplit_once("@sha256:").is_some_and(|(_, hex)| {
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
            if !pinned {
                return Err(format!(
                    "{rel}: the image {url} is not pinned by digest (expected ...@sha256:<64 hex digits>, as \
                     `cargo xtask image` prints)"
                ));
            }
        }
    }
    Ok(())
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    // No /etc/containers/policy.json needed: the test trusts what it pushed itself.
    c.arg("--insecure-policy");
    c
}

/// Debian's `docker-registry` and `skopeo`, installed with apt-get when missing.
fn ensure_packages() -> Result<(), String> {
    let missing: Vec<&str> =
        ["docker-registry", "skopeo"].into_iter().filter(|program| !on_path(program)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        return Err(format!(
            "the image test needs {} (Debian packages; not found, and no apt-get to install them)",
            missing.join(" and ")
        ));
    }
    eprintln!("\nxtask: installing {} with apt-get", missing.join(", "));
    step("apt-get update", Command::new("apt-get").args(["update", "-q"]))?;
    step(
        "install the registry and skopeo",
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A `docker-registry` on a free loopback port with its own config and storage; stopped (by its PID)
/// when dropped, whatever happened in between.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry, String> {
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| format!("cannot create {}: {e}", storage.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free loopback port: {e}"))?
            .port();
        let config = dir.join("config.yml");
        write_file(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            )
            .as_bytes(),
        )?;
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let err_log = log.try_clone().map_err(|e| format!("cannot reopen {}: {e}", log_path.display()))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("cannot start docker-registry: {e}"))?;
        let mut registry = Registry { child, port };
        eprintln!("\n==> registry: docker-registry on 127.0.0.1:{port} (pid {})", registry.child.id());
        let started = Instant::now();
        loop {
            if registry_answers(port) {
                return Ok(registry);
            }
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Ok(Some(status)) = registry.child.try_wait() {
                return Err(format!("docker-registry exited ({status}) before it answered:\n{}", log()));
            }
            if started.elapsed() > Duration::from_secs(15) {
                return Err(format!("docker-registry did not answer GET /v2/ within 15 s:\n{}", log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when `GET /v2/` answers 200 (the registry's API check).
fn registry_answers(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0 not really a module, but the header is right";

    #[test]
    fn same_module_same_digests() {
        let dir = target_dir().join("oci-image-unit");
        for format in [Format::Compat, Format::Oci] {
            let a = write_layout(format, MODULE, "t", &dir.join(format!("{}-a", format.name()))).unwrap();
            let b = write_layout(format, MODULE, "t", &dir.join(format!("{}-b", format.name()))).unwrap();
            assert_eq!(a.manifest_digest, b.manifest_digest, "{format:?}");
            let other = write_layout(format, b"\0asm\x01\0\0\0x", "t", &dir.join("other")).unwrap();
            assert_ne!(a.manifest_digest, other.manifest_digest, "{format:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tar_is_ustar_with_fixed_metadata() {
        let tar = tar_one_file("plugin.wasm", MODULE).unwrap();
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[257..263], b"ustar\0");
        assert_eq!(&tar[512..512 + MODULE.len()], MODULE);
        // The checksum field matches the header with the field read as spaces.
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(&tar[148..156], format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn gzip_header_has_no_time_or_name() {
        let gz = gzip(b"abc").unwrap();
        // Magic, deflate, no flags (so no file name), mtime 0, OS unknown.
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[9], 255);
    }

    #[test]
    fn bad_tags_are_refused_with_the_flag_named() {
        let args = |t: &str| vec![String::from("--tag"), t.to_string()];
        for bad in ["no-colon", "Upper/case:1", "name:-dash", "name:", ":tag"] {
            let err = parse_args(&args(bad)).err().unwrap();
            assert!(err.starts_with("--tag:"), "{bad}: {err}");
        }
        let ok = parse_args(&args("wasm-epp/epp-filter:0.1.0")).unwrap();
        assert_eq!((ok.name.as_str(), ok.tag.as_str()), ("wasm-epp/epp-filter", "0.1.0"));
        let err = parse_args(&[String::from("--format"), String::from("zip")]).err().unwrap();
        assert!(err.contains("--format: expected compat, oci or both"), "{err}");
    }
}
