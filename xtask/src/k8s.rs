//! The Kubernetes side of `cargo xtask`: every Kubernetes manifest the project ships is validated offline
//! against Kubernetes' own schemas and the real CRDs (`test-harness/fixtures/crds/`, each naming the
//! repository, path and release it came from), so a manifest a cluster would refuse fails CI.
//!
//! The manifests are one set applied together: every name one of them gives another (route parents and
//! backends, policy targets, the picker's endpointPickerRef and collector Service, RBAC subjects) must be
//! defined by one of them.
//!
//! The validator is `xtask/src/k8s_validate.py`, run with the project venv's python where the PyPI package
//! `kubernetes-validate` is installed on demand (it ships Kubernetes' JSON schemas in its wheel and brings
//! `jsonschema` and `PyYAML`), with `cel-python`, which evaluates the CRDs' CEL rules
//! (`x-kubernetes-validations`) as the API server does on create; nothing is fetched at validation time.

use crate::cmd::{have, step, workspace_root};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `kubernetes-validate` release line the validator is written for (its schemas go up to 1.37).
const KUBERNETES_VALIDATE_VERSION: &str = "1.37";

/// The Kubernetes versions every manifest is checked against: the oldest minor the manifests claim to
/// support and the newest `kubernetes-validate` ships.
const KUBERNETES_VERSIONS: &str = "1.33,1.37";

/// The `cel-python` release line the validator's CEL evaluation is written for.
const CEL_PYTHON_VERSION: &str = "0.5";

/// Where the CRDs live (relative to the workspace root).
const CRD_DIR: &str = "test-harness/fixtures/crds";

/// Manifests the validator must refuse, with what each refusal must say: proof that a broken manifest
/// fails (a validator that accepts everything would pass the real manifests too).
const MUST_FAIL: &str = "\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: bad-pool}
spec:
  selector: {matchLabels: {app: x}}
  targetPorts: [{number: \"8000\"}]
  endpointPickerRef: {name: epp, port: {number: 9002}, failureMod: FailOpen}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: Bad_Name}
spec:
  replicas: 1
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: c, image: i, portz: []}]}
---
apiVersion: example.com/v1
kind: Nothing
metadata: {name: x}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: g}]
  rules: [{backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: p, port: x}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: no-port}
spec:
  rules: [{backendRefs: [{name: bad-pool}]}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: ftp}
spec:
  url: ftp://example.com/picker.wasm
";

const MUST_FAIL_ERRORS: &[&str] = &[
    "document 1 (InferencePool bad-pool): spec.endpointPickerRef: Additional properties are not allowed \
     ('failureMod' was unexpected)",
    "document 1 (InferencePool bad-pool): spec.targetPorts[0].number: '8000' is not of type 'integer'",
    "document 2 (Deployment Bad_Name): metadata.name: 'Bad_Name' is not a DNS-1123 subdomain",
    "document 2 (Deployment Bad_Name): spec.template.spec.containers[0]: Additional properties are not \
     allowed ('portz' was unexpected)",
    "document 3 (Nothing x): no schema for example.com/v1 Nothing",
    "document 4 (HTTPRoute r): spec.rules[0].backendRefs[0].port: 'x' is not of type 'integer'",
    "document 4 (HTTPRoute r): spec.parentRefs[0]: no Gateway 'g' among the manifests",
    "document 1 (InferencePool bad-pool): spec.endpointPickerRef: no Service 'epp' among the manifests",
    // CEL rules, after the defaults (backendRefs' kind Service, group "") are applied.
    "document 5 (HTTPRoute no-port): spec.rules[0].backendRefs[0]: Must have port for Service reference (CEL)",
    "document 6 (WasmPlugin ftp): spec.url: url must have schema one of [http, https, file, oci] (CEL)",
];

/// The Kubernetes manifests the project ships: every `.yaml`/`.yml` under `envoy-config/kubernetes/`, and
/// any other one under `envoy-config/` that reads as a Kubernetes object (a top-level `apiVersion:`), except
/// Envoy bootstraps and EndpointPickerConfig files (configuration, not cluster objects).
pub fn manifest_files() -> Result<Vec<PathBuf>, String> {
    let root = workspace_root().join("envoy-config");
    let mut files = Vec::new();
    collect(&root, &root.join("kubernetes"), &mut files)?;
    files.sort();
    Ok(files)
}

fn collect(dir: &Path, k8s_dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?.path();
        if path.is_dir() {
            collect(&path, k8s_dir, files)?;
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || name == "envoy.yaml" {
            continue;
        }
        if path.starts_with(k8s_dir) {
            files.push(path);
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let is_object = text.lines().any(|l| l.starts_with("apiVersion:"));
        let is_picker_config = text.lines().any(|l| l.trim_end() == "kind: EndpointPickerConfig");
        if is_object && !is_picker_config {
            files.push(path);
        }
    }
    Ok(())
}

/// Validates every shipped manifest, after checking that the validator refuses known-bad ones; the error
/// lists every failing document (file, document index, kind and name, field path, the schema's complaint).
pub fn validate_all() -> Result<(), String> {
    let python = ensure_validator()?;
    let root = workspace_root();
    let script = root.join("xtask/src/k8s_validate.py");
    let crds = root.join(CRD_DIR);

    let scratch = root.join("target/k8s-validate");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let bad = scratch.join("must-fail.yaml");
    std::fs::write(&bad, MUST_FAIL).map_err(|e| format!("cannot write {}: {e}", bad.display()))?;
    let (ok, report) = run_validator(&python, &script, &crds, &[bad])?;
    let missing: Vec<&str> = MUST_FAIL_ERRORS.iter().copied().filter(|e| !report.contains(e)).collect();
    if ok || !missing.is_empty() {
        return Err(format!(
            "the Kubernetes validator did not refuse the known-bad manifests as expected (missing: {missing:?}); \
             its output:\n{report}"
        ));
    }

    let files = manifest_files()?;
    if files.is_empty() {
        return Err(String::from("no Kubernetes manifests under envoy-config/kubernetes/"));
    }
    let rel: Vec<PathBuf> = files.iter().map(|f| f.strip_prefix(&root).unwrap_or(f).to_path_buf()).collect();
    eprintln!(
        "\n==> Kubernetes manifests: {} files against {CRD_DIR}/ and Kubernetes {KUBERNETES_VERSIONS}",
        rel.len()
    );
    let (ok, report) = run_validator(&python, &script, &crds, &rel)?;
    eprint!("{report}");
    if ok {
        Ok(())
    } else {
        Err(String::from("invalid Kubernetes manifests (each error above names file, document and field)"))
    }
}

/// Runs the validator from the workspace root (so it names files as given); true when it exits 0.
fn run_validator(
    python: &Path,
    script: &Path,
    crds: &Path,
    files: &[PathBuf],
) -> Result<(bool, String), String> {
    let out = Command::new(python)
        .arg(script)
        .arg(crds)
        .arg(KUBERNETES_VERSIONS)
        .args(files)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    match out.status.code() {
        Some(0) => Ok((true, report)),
        Some(1) => Ok((false, report)),
        _ => Err(format!("the Kubernetes validator failed to run ({}):\n{report}", out.status)),
    }
}

/// Returns the venv's python with `kubernetes-validate` and `celpy` importable, creating `.venv/` (the venv
/// Envoy is installed into) and installing the packages from PyPI when missing.
fn ensure_validator() -> Result<PathBuf, String> {
    let venv = workspace_root().join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        if !have("python3", None) {
            return Err(String::from(
                "the Kubernetes validator is installed from PyPI into .venv/, which needs python3 (>= 3.9) \
                 with the venv module; install python3 (e.g. `apt-get install python3 python3-venv`) and rerun",
            ));
        }
        step("create venv", Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let probe = "import importlib.metadata as m; import kubernetes_validate, celpy; \
                 print(m.version('kubernetes-validate'), m.version('cel-python'))";
    let installed = Command::new(&python).args(["-c", probe]).output();
    let ready = installed.is_ok_and(|o| {
        let versions = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut v = versions.split_whitespace();
        o.status.success()
            && v.next().is_some_and(|k| k.starts_with(&format!("{KUBERNETES_VALIDATE_VERSION}.")))
            && v.next().is_some_and(|c| c.starts_with(&format!("{CEL_PYTHON_VERSION}.")))
    });
    if ready {
        return Ok(python);
    }
    eprintln!(
        "\nxtask: kubernetes-validate {KUBERNETES_VALIDATE_VERSION} or cel-python {CEL_PYTHON_VERSION} is \
         missing; installing them into {}",
        venv.display()
    );
    let specs = [
        format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}.*"),
        format!("cel-python=={CEL_PYTHON_VERSION}.*"),
    ];
    step(
        "install kubernetes-validate and cel-python",
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet"])
            .args(&specs),
    )?;
    Ok(python)
}

/// `cargo xtask k8s-check`: the Kubernetes step alone, for editing manifests.
pub fn check(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("`cargo xtask k8s-check` takes no arguments, got {a:?}"));
    }
    validate_all()
}
