"""Validates Kubernetes manifests offline, as an API server with strict field validation would.

Run by `cargo xtask test` (xtask/src/k8s.rs) with the project venv's python, where `kubernetes-validate`
(it ships Kubernetes' own JSON schemas and brings jsonschema and PyYAML) and `cel-python` are installed.

usage: k8s_validate.py CRD_DIR KUBERNETES_VERSION[,VERSION...] MANIFEST...

- Core kinds (Deployment, Service, ServiceAccount, Role, RoleBinding, ...) are checked with
  kubernetes_validate in strict mode (unknown fields are errors) for every version given.
- Custom resources are checked against the openAPIV3Schema of the CustomResourceDefinitions under
  CRD_DIR, turned into JSON Schema the way the API server reads it: unknown fields are errors unless the
  schema preserves them, `x-kubernetes-int-or-string` takes either, `nullable` admits null, and
  `metadata` is Kubernetes' ObjectMeta.
- Then, as the API server does on create, the schema's defaults are applied and every CEL rule
  (`x-kubernetes-validations`) on a node the object has is evaluated with `self` bound to that node; a rule
  that is false fails with its message, one that cannot be evaluated fails too (the API server refuses
  such an object as well). Transition rules (those reading `oldSelf`) apply only to updates and are
  skipped; the run counts both. Kubernetes' CEL libraries beyond standard CEL that the CRDs use are
  provided here: `lowerAscii`, `upperAscii`, `split` (strings), `isURL`, `url`, `getScheme` (URLs; `isURL`
  as Go's url.ParseRequestURI: an absolute URI or an absolute path).

The files are one set, applied together in one namespace: a name one document gives another (an
HTTPRoute's parent and backends, a policy's targetRefs, an InferencePool's endpointPickerRef, a
RoleBinding's role and subjects, a Deployment's service account, the picker's pool.discoveryUrl Service and
port) must be defined by one of them.

Every failure names the file, the document's index (1-based) and kind/name, the field path and the
schema's complaint; the exit status is 1 when any document fails, 2 on a usage or fixture error.
"""

import copy
import os
import re
import sys
from urllib.parse import urlsplit

import celpy
from celpy import celtypes

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# What the API server requires of metadata.name (DNS-1123 subdomain; Services: DNS-1035 label).
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Annotation keys only: they say nothing about what is valid.
DROPPED = {"description", "example", "externalDocs", "format", "default", "nullable"}


def convert(node, cel):
    """One openAPIV3Schema node as JSON Schema (draft 2020-12); counts CEL rules into cel[0]."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: convert(sub, cel) for name, sub in value.items()}
        elif key in ("items", "not"):
            out[key] = convert(value, cel)
        elif key == "additionalProperties":
            out[key] = convert(value, cel) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(sub, cel) for sub in value]
        elif key == "x-kubernetes-validations":
            cel[0] += len(value)
        elif key.startswith("x-kubernetes-") or key in DROPPED:
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = out.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
    # Structural schemas prune unknown fields; with strict field validation (kubectl's default) they
    # are errors. Only nodes that declare their own type and properties get closed: anyOf/allOf branches
    # of a structural schema declare no type.
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def load_crds(crd_dir):
    """(apiVersion, kind) -> (JSON Schema, CRD file, CEL rule count, openAPIV3Schema) for every served
    version."""
    schemas = {}
    files = sorted(f for f in os.listdir(crd_dir) if f.endswith(".yaml"))
    if not files:
        raise SystemExit(f"k8s_validate: no CRDs (*.yaml) in {crd_dir}")
    for name in files:
        with open(os.path.join(crd_dir, name)) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for crd in docs:
            if crd.get("kind") != "CustomResourceDefinition":
                raise SystemExit(f"k8s_validate: {name}: expected only CustomResourceDefinition documents, "
                                 f"got kind {crd.get('kind')!r}")
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                cel = [0]
                schema = convert(version["schema"]["openAPIV3Schema"], cel)
                # The API server adds these three to every custom resource's schema.
                root = schema.setdefault("properties", {})
                root["metadata"] = {"$ref": OBJECT_META}
                root["apiVersion"] = {"type": "string"}
                root["kind"] = {"type": "string"}
                schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = (schema, name, cel[0], version["schema"]["openAPIV3Schema"])
    return schemas


def definitions_registry(k8s_version):
    """Kubernetes' strict definitions (ObjectMeta and friends) as a referencing registry."""
    version = schema_version(k8s_version)
    defs = kv.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", k8s_version)
    return Resource.from_contents(defs) @ Registry()


def core_schema(api_version, kind, k8s_version):
    """Kubernetes' strict schema for a core kind, as kubernetes_validate.validate finds it (that function
    stops at the first error; this one is used to report them all)."""
    version = schema_version(k8s_version)
    # rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        return kv.schema_contents(
            f"kubernetes-json-schema/v{version}-local-strict/{kind.lower()}-{group_version}.json", k8s_version
        )
    except FileNotFoundError:
        return None


def schema_version(k8s_version):
    """The newest schema set kubernetes-validate ships that is not newer than k8s_version."""
    versions = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(k8s_version)]
    if not versions or kv.major_minor(k8s_version) > kv.latest_version():
        raise SystemExit(
            f"k8s_validate: kubernetes-validate {kubernetes_validate.__version__} has no schemas for "
            f"Kubernetes {k8s_version} (it has {kv.all_versions()[0]}..{kv.latest_version()})"
        )
    return versions[-1]


def path_of(error):
    parts = []
    for p in error.absolute_path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(document)"


def name_errors(doc):
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str):
        return ["metadata.name: required, a string"]
    if doc.get("kind") == "Service" and doc.get("apiVersion") == "v1":
        if not LABEL_1035.match(name) or len(name) > 63:
            return [f"metadata.name: {name!r} is not a DNS-1035 label (a Service name)"]
    elif not SUBDOMAIN.match(name) or len(name) > 253:
        return [f"metadata.name: {name!r} is not a DNS-1123 subdomain"]
    return []


URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def cel_is_url(s):
    text = str(s)
    if not (URI_SCHEME.match(text) or text.startswith("/")):
        return celtypes.BoolType(False)
    try:
        urlsplit(text)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def cel_url(s):
    if not cel_is_url(s):
        raise ValueError(f"URL parse error during conversion from string: {str(s)!r}")
    return celtypes.StringType(str(s))


CEL_FUNCTIONS = {
    "lowerAscii": lambda s: celtypes.StringType(str(s).lower()),
    "upperAscii": lambda s: celtypes.StringType(str(s).upper()),
    "split": lambda s, sep: celtypes.ListType([celtypes.StringType(x) for x in str(s).split(str(sep))]),
    "isURL": cel_is_url,
    "url": cel_url,
    "getScheme": lambda u: celtypes.StringType(urlsplit(str(u)).scheme),
}


class Cel:
    """Evaluates a CRD's CEL rules on an object, compiling each distinct rule once."""

    def __init__(self):
        self.env = celpy.Environment()
        self.programs = {}
        self.evaluated = 0
        self.transition = 0

    def program(self, rule):
        if rule not in self.programs:
            self.programs[rule] = self.env.program(self.env.compile(rule), functions=CEL_FUNCTIONS)
        return self.programs[rule]

    def errors(self, schema, value, path, errors):
        if not isinstance(schema, dict):
            return
        for rule in schema.get("x-kubernetes-validations") or []:
            text = rule["rule"]
            where = path or "(document)"
            if "oldSelf" in text:
                self.transition += 1
                continue
            try:
                result = self.program(text).evaluate({"self": celpy.json_to_cel(value)})
            except Exception as e:  # a rule the API server could not evaluate refuses the object too
                errors.append(f"{where}: CEL rule {text!r} could not be evaluated: {e}")
                continue
            if isinstance(result, celpy.CELEvalError):
                errors.append(f"{where}: CEL rule {text!r} could not be evaluated: {result.args[0]}")
                continue
            self.evaluated += 1
            if not bool(result):
                errors.append(f"{where}: {rule.get('message') or 'failed rule: ' + text} (CEL)")
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            for key, sub in value.items():
                sub_path = f"{path}.{key}" if path else key
                if key in props:
                    self.errors(props[key], sub, sub_path, errors)
                elif isinstance(extra, dict):
                    self.errors(extra, sub, sub_path, errors)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, sub in enumerate(value):
                self.errors(schema["items"], sub, f"{path}[{i}]", errors)
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(key) or []:
                self.errors(sub, value, path, errors)


def with_defaults(schema, value):
    """`value` with the schema's defaults filled in, as the API server does before validating."""
    value = copy.deepcopy(value)

    def fill(node, v):
        if not isinstance(node, dict):
            return
        if isinstance(v, dict):
            props = node.get("properties") or {}
            for key, sub in props.items():
                if key not in v and isinstance(sub, dict) and "default" in sub:
                    v[key] = copy.deepcopy(sub["default"])
            extra = node.get("additionalProperties")
            for key, sub in v.items():
                if key in props:
                    fill(props[key], sub)
                elif isinstance(extra, dict):
                    fill(extra, sub)
        elif isinstance(v, list) and isinstance(node.get("items"), dict):
            for sub in v:
                fill(node["items"], sub)

    fill(schema, value)
    return value


def validate_doc(doc, crds, versions, registries, cel):
    """Errors for one document, and the number of CEL rules its kind carries."""
    if not isinstance(doc, dict):
        return [f"expected a mapping (a Kubernetes object), got {type(doc).__name__}"], 0
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind: required, strings"], 0
    errors = name_errors(doc)
    crd = crds.get((api_version, kind))
    if crd is not None:
        schema, crd_file, rules, raw = crd
        # A CRD's schema does not change with the Kubernetes version; ObjectMeta barely does.
        validator = jsonschema.Draft202012Validator(schema, registry=registries[versions[0]])
        schema_errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        for e in schema_errors:
            errors.append(f"{path_of(e)}: {e.message} (CRD {crd_file})")
        # The API server runs CEL rules only on objects that passed the schema.
        if not schema_errors:
            cel_errors = []
            cel.errors(raw, with_defaults(raw, doc), "", cel_errors)
            errors += [f"{e} (CRD {crd_file})" for e in cel_errors]
        return errors, rules
    for version in versions:
        schema = core_schema(api_version, kind, version)
        if schema is None:
            return errors + [
                f"no schema for {api_version} {kind}: neither a Kubernetes kind nor a served version of "
                f"a CRD in the fixtures"
            ], 0
        validator = jsonschema.Draft202012Validator(schema, registry=registries[version])
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
            errors.append(f"{path_of(e)}: {e.message} (Kubernetes {version} schema)")
    return errors, 0


def reference_errors(doc, objects):
    """Names a controller resolves in the object's own namespace that no shipped manifest defines (the
    manifests are one set, applied together). Kinds the platform creates itself (GatewayClass "istio")
    are not checked."""
    kind, spec, errors = doc.get("kind"), doc.get("spec") or {}, []

    def need(ref_kind, name, where, port=None):
        target = objects.get((ref_kind, name))
        if target is None:
            errors.append(f"{where}: no {ref_kind} {name!r} among the manifests")
        elif port is not None and ref_kind == "Service":
            ports = [p.get("port") for p in (target.get("spec") or {}).get("ports") or []]
            if port not in ports:
                errors.append(f"{where}: Service {name!r} has no port {port} (it has {ports})")

    for i, ref in enumerate(spec.get("targetRefs") or []):
        need(ref.get("kind"), ref.get("name"), f"spec.targetRefs[{i}]")
    if kind == "HTTPRoute":
        for i, ref in enumerate(spec.get("parentRefs") or []):
            need(ref.get("kind", "Gateway"), ref.get("name"), f"spec.parentRefs[{i}]")
        for r, rule in enumerate(spec.get("rules") or []):
            for b, ref in enumerate(rule.get("backendRefs") or []):
                need(ref.get("kind", "Service"), ref.get("name"), f"spec.rules[{r}].backendRefs[{b}]", ref.get("port"))
    elif kind == "InferencePool" and spec.get("endpointPickerRef"):
        ref = spec["endpointPickerRef"]
        need(ref.get("kind", "Service"), ref.get("name"), "spec.endpointPickerRef", (ref.get("port") or {}).get("number"))
    elif kind == "InferenceObjective":
        need("InferencePool", (spec.get("poolRef") or {}).get("name"), "spec.poolRef")
    elif kind == "RoleBinding":
        need(doc.get("roleRef", {}).get("kind"), doc.get("roleRef", {}).get("name"), "roleRef")
        for i, subject in enumerate(doc.get("subjects") or []):
            if subject.get("kind") == "ServiceAccount":
                need("ServiceAccount", subject.get("name"), f"subjects[{i}]")
    elif kind == "Deployment":
        account = ((spec.get("template") or {}).get("spec") or {}).get("serviceAccountName")
        if account:
            need("ServiceAccount", account, "spec.template.spec.serviceAccountName")
    # The picker's collector URL names a Service of the set: http://<service>.<namespace>.svc...:<port>/...
    configs = []
    if kind == "WasmPlugin":
        configs.append(("spec.pluginConfig", spec.get("pluginConfig") or {}))
    elif kind == "EnvoyExtensionPolicy":
        configs += [(f"spec.wasm[{i}].config", w.get("config") or {}) for i, w in enumerate(spec.get("wasm") or [])]
    # A picker serving several pools (`pools`) names one collector per pool.
    for where, config in list(configs):
        configs += [(f"{where}.pools[{i}]", p or {}) for i, p in enumerate(config.get("pools") or [])]
    for where, config in configs:
        url = (config.get("pool") or {}).get("discoveryUrl")
        match = re.match(r"^http://([a-z0-9-]+)\.[a-z0-9-]+\.svc(?:\.cluster\.local)?:(\d+)/", url or "")
        if url and match:
            need("Service", match.group(1), f"{where}.pool.discoveryUrl", int(match.group(2)))
        elif url:
            errors.append(f"{where}.pool.discoveryUrl: {url!r} is not http://<service>.<namespace>.svc[.cluster.local]:<port>/...")
    return errors


def main(argv):
    if len(argv) < 4:
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    crd_dir, versions, files = argv[1], argv[2].split(","), argv[3:]
    crds = load_crds(crd_dir)
    registries = {v: definitions_registry(v) for v in versions}
    failures, cel_total, cel = 0, 0, Cel()
    loaded = []  # (file, index, document)
    for path in files:
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except (OSError, yaml.YAMLError) as e:
            print(f"{path}: cannot read as YAML: {e}")
            failures += 1
            continue
        loaded += [(path, index, doc) for index, doc in enumerate(docs, start=1)]
    objects = {
        (doc.get("kind"), (doc.get("metadata") or {}).get("name")): doc for _, _, doc in loaded if isinstance(doc, dict)
    }
    for path, index, doc in loaded:
        errors, rules = validate_doc(doc, crds, versions, registries, cel)
        if isinstance(doc, dict):
            errors += reference_errors(doc, objects)
        cel_total += rules
        if errors:
            failures += 1
            what = f"{doc.get('kind')} {(doc.get('metadata') or {}).get('name')}" if isinstance(doc, dict) else ""
            for e in errors:
                print(f"{path} document {index} ({what}): {e}")
    sys.stdout.flush()
    print(
        f"    {len(loaded)} Kubernetes documents in {len(files)} files checked against Kubernetes "
        f"{', '.join(versions)}, {len(crds)} CRD versions and each other's names; {failures} invalid; "
        f"CEL: {cel.evaluated} rule evaluations on the fields present (of {cel_total} rules their kinds "
        f"carry), {cel.transition} transition rules skipped (updates only)",
        file=sys.stderr,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
