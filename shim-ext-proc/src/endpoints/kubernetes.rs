//! Discovery from Kubernetes: watch one InferencePool (`inference.networking.k8s.io/v1`) and the pods
//! its selector matches; every target port of every Ready, not-terminating pod is an endpoint, with
//! the engine from the pod label `llm-d.ai/engine-type`, else `inference.networking.k8s.io/engine-type`
//! (llm-d-router's order).
//!
//! Beside them, the InferenceObjective and InferenceModelRewrite resources of the pool's namespace whose
//! `spec.poolRef` names this pool (group `inference.networking.k8s.io`, the CRDs' default) become the
//! snapshot's [`PoolResources`]: priorities by objective name, rewrites oldest first. As llm-d-router
//! v0.10 does, each kind is read from `llm-d.ai/v1alpha2` when the cluster serves it there, else from
//! the legacy `inference.networking.x-k8s.io/v1alpha2` (GIE up to v1.5); a kind served by neither is
//! looked for again every 30 s.
//!
//! kube-rs does the list+watch bookkeeping (resource versions, re-lists, backoff); this module only
//! turns the object streams into endpoint lists and resources.

use super::Discovered;
use crate::pool::Pool;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};
use scheduler_core::config::objectives::{Objective, ObjectivePriorities};
use scheduler_core::model::{validate_address, Endpoint, Engine, PoolResources, Role};
use scheduler_core::model_rewrite::{InferenceModelRewrite, ModelRewrites};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};

pub use scheduler_core::model::ENGINE_LABELS;
/// llm-d's disaggregated-serving role label (`prefill`, `decode`, `both`).
pub const ROLE_LABEL: &str = "llm-d.ai/role";
/// The InferencePool's API group, which a resource's `spec.poolRef.group` must name (its default).
pub const POOL_GROUP: &str = "inference.networking.k8s.io";
/// Where InferenceObjective and InferenceModelRewrite are served, preferred first (llm-d-router v0.10's
/// order: it ignores the legacy group when both are installed).
pub const RESOURCE_GROUPS: [&str; 2] = ["llm-d.ai", "inference.networking.x-k8s.io"];
pub const RESOURCE_VERSION: &str = "v1alpha2";
/// How often a kind that no group serves is looked for again (its CRD may be installed later).
const PROBE_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// API server URL without credentials (tests, `kubectl proxy`); `None` uses the in-cluster service
    /// account or the kubeconfig, as kube's `Config::infer` does.
    pub api_url: Option<String>,
    /// Defaults to the service account's / kubeconfig's namespace.
    pub namespace: Option<String>,
    pub pool_name: String,
}

#[derive(Debug)]
pub enum KubeError {
    Url(String),
    Config(String),
    Client(kube::Error),
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::Url(u) => write!(f, "--k8s-api-url {u:?} is not a URL"),
            KubeError::Config(e) => write!(f, "no Kubernetes configuration (in-cluster or kubeconfig): {e}"),
            KubeError::Client(e) => write!(f, "cannot build a Kubernetes client: {e}"),
        }
    }
}

impl std::error::Error for KubeError {}

/// The parts of `InferencePool.spec` discovery needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    #[serde(default)]
    pub selector: Selector,
    #[serde(default)]
    pub target_ports: Vec<TargetPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TargetPort {
    pub number: u16,
}

fn pool_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("inference.networking.k8s.io", "v1", "InferencePool"))
}

type Events<K> = Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

/// Watches until the task is dropped, publishing each complete endpoint list on `tx` and the pool's
/// InferenceObjective / InferenceModelRewrite resources on `resources` (whenever they change, once both
/// kinds' first lists are in or a kind is not served).
pub async fn run(
    settings: KubeSettings,
    tx: watch::Sender<Discovered>,
    resources: watch::Sender<PoolResources>,
) -> Result<(), KubeError> {
    let config = match &settings.api_url {
        Some(url) => Config::new(url.parse().map_err(|_| KubeError::Url(url.clone()))?),
        None => Config::infer().await.map_err(|e| KubeError::Config(e.to_string()))?,
    };
    let namespace = settings.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(KubeError::Client)?;
    let watch_resources =
        watch_resources(client.clone(), namespace.clone(), settings.pool_name.clone(), resources);
    let (r, ()) = tokio::join!(watch_pool(client, namespace, settings, tx), watch_resources);
    r
}

/// Copies each published set of resources into the pool (which puts it in the next snapshot), until the
/// sender is dropped.
pub async fn follow_resources(mut rx: watch::Receiver<PoolResources>, pool: Arc<Pool>) {
    loop {
        let next = rx.borrow_and_update().clone();
        pool.set_resources(next);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn watch_pool(
    client: Client,
    namespace: String,
    settings: KubeSettings,
    tx: watch::Sender<Discovered>,
) -> Result<(), KubeError> {
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &pool_resource());
    let by_name = watcher::Config::default().fields(&format!("metadata.name={}", settings.pool_name));
    let mut pool_events: Events<DynamicObject> = Box::pin(watcher::watcher(pools, by_name).default_backoff());
    let mut pod_events: Option<Events<Pod>> = None;
    let mut spec: Option<PoolSpec> = None;
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    let mut listing: BTreeMap<String, Pod> = BTreeMap::new();
    let mut pods_synced = false;
    let publish = |spec: &Option<PoolSpec>, pods: &BTreeMap<String, Pod>| {
        let list = spec.as_ref().map(|s| endpoints(s, pods.values())).unwrap_or_default();
        tx.send_if_modified(|cur| {
            let changed = cur.as_ref() != Some(&list);
            *cur = Some(list);
            changed
        });
    };
    loop {
        tokio::select! {
            ev = pool_events.next() => match ev {
                Some(Ok(Event::Apply(obj) | Event::InitApply(obj))) => {
                    let next = parse_spec(&obj, &settings.pool_name);
                    if next != spec {
                        let selector = next.as_ref().map(|s| label_selector(&s.selector));
                        spec = next;
                        pods.clear();
                        pods_synced = false;
                        pod_events = selector.map(|sel| {
                            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                            let events: Events<Pod> =
                                Box::pin(watcher::watcher(api, watcher::Config::default().labels(&sel)).default_backoff());
                            events
                        });
                    }
                }
                Some(Ok(Event::Delete(_))) => {
                    log::warn!("InferencePool {namespace}/{} was deleted; no endpoints", settings.pool_name);
                    spec = None;
                    pod_events = None;
                    publish(&spec, &pods);
                }
                Some(Ok(Event::InitDone)) if spec.is_none() => {
                    log::warn!("InferencePool {namespace}/{} not found; no endpoints", settings.pool_name);
                    publish(&spec, &pods);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => log::warn!("watching InferencePool {namespace}/{}: {e}", settings.pool_name),
                None => return Ok(()),
            },
            ev = next_event(&mut pod_events) => match ev {
                Some(Ok(Event::Init)) => listing.clear(),
                Some(Ok(Event::InitApply(pod))) => {
                    listing.insert(pod_key(&pod), pod);
                }
                Some(Ok(Event::InitDone)) => {
                    pods = std::mem::take(&mut listing);
                    pods_synced = true;
                    publish(&spec, &pods);
                }
                Some(Ok(Event::Apply(pod))) => {
                    pods.insert(pod_key(&pod), pod);
                    if pods_synced { publish(&spec, &pods); }
                }
                Some(Ok(Event::Delete(pod))) => {
                    pods.remove(&pod_key(&pod));
                    if pods_synced { publish(&spec, &pods); }
                }
                Some(Err(e)) => log::warn!("watching pods of {}: {e}", settings.pool_name),
                None => pod_events = None,
            },
        }
    }
}

/// One resource kind (InferenceObjective or InferenceModelRewrite): where it is served, its watch, and
/// the objects of the last complete list plus the events since.
struct Watched {
    kind: &'static str,
    events: Option<Events<DynamicObject>>,
    /// Served nowhere (told once, then looked for quietly).
    missing_told: bool,
    items: BTreeMap<String, DynamicObject>,
    listing: BTreeMap<String, DynamicObject>,
    synced: bool,
}

impl Watched {
    fn new(kind: &'static str) -> Watched {
        Watched {
            kind,
            events: None,
            missing_told: false,
            items: BTreeMap::new(),
            listing: BTreeMap::new(),
            synced: false,
        }
    }

    /// Finds the group that serves this kind and starts watching it in `namespace`.
    async fn discover(&mut self, client: &Client, namespace: &str) {
        for group in RESOURCE_GROUPS {
            let api_version = format!("{group}/{RESOURCE_VERSION}");
            let list = match client.list_api_group_resources(&api_version).await {
                Ok(list) => list,
                // The group or version is not served: try the next one.
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(e) => {
                    log::warn!("looking for {} in {api_version}: {e}; counting it as not served", self.kind);
                    continue;
                }
            };
            let Some(found) = list.resources.iter().find(|r| r.kind == self.kind && !r.name.contains('/'))
            else {
                continue;
            };
            let gvk = GroupVersionKind::gvk(group, RESOURCE_VERSION, self.kind);
            let resource = ApiResource::from_gvk_with_plural(&gvk, &found.name);
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
            log::info!("watching {} in {namespace} as {api_version}", self.kind);
            self.events = Some(Box::pin(watcher::watcher(api, watcher::Config::default()).default_backoff()));
            return;
        }
        if !self.missing_told {
            log::info!(
                "no {} CRD is served ({}/{RESOURCE_VERSION} or {}/{RESOURCE_VERSION}); only the configuration's apply",
                self.kind,
                RESOURCE_GROUPS[0],
                RESOURCE_GROUPS[1]
            );
            self.missing_told = true;
        }
        // Nothing to wait for: an unserved kind counts as an empty list.
        self.synced = true;
    }

    /// Folds one event in; true when the visible set may have changed.
    fn apply(&mut self, ev: Option<Result<Event<DynamicObject>, watcher::Error>>) -> bool {
        match ev {
            Some(Ok(Event::Init)) => {
                self.listing.clear();
                false
            }
            Some(Ok(Event::InitApply(obj))) => {
                self.listing.insert(obj.metadata.name.clone().unwrap_or_default(), obj);
                false
            }
            Some(Ok(Event::InitDone)) => {
                self.items = std::mem::take(&mut self.listing);
                self.synced = true;
                true
            }
            Some(Ok(Event::Apply(obj))) => {
                self.items.insert(obj.metadata.name.clone().unwrap_or_default(), obj);
                self.synced
            }
            Some(Ok(Event::Delete(obj))) => {
                self.items.remove(obj.metadata.name.as_deref().unwrap_or_default());
                self.synced
            }
            Some(Err(e)) => {
                log::warn!("watching {}: {e}", self.kind);
                false
            }
            None => {
                self.events = None;
                false
            }
        }
    }

    /// The objects whose `spec.poolRef` names `pool`, not being deleted.
    fn for_pool<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a DynamicObject> + 'a {
        self.items
            .values()
            .filter(move |o| o.metadata.deletion_timestamp.is_none() && refers_to_pool(o, pool))
    }
}

async fn watch_resources(client: Client, namespace: String, pool: String, out: watch::Sender<PoolResources>) {
    let mut objectives = Watched::new("InferenceObjective");
    let mut rewrites = Watched::new("InferenceModelRewrite");
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            _ = probe.tick(), if objectives.events.is_none() || rewrites.events.is_none() => {
                for w in [&mut objectives, &mut rewrites] {
                    if w.events.is_none() {
                        w.discover(&client, &namespace).await;
                    }
                }
                true
            }
            ev = next_event(&mut objectives.events) => objectives.apply(ev),
            ev = next_event(&mut rewrites.events) => rewrites.apply(ev),
        };
        if changed && objectives.synced && rewrites.synced {
            let next = PoolResources {
                objectives: objectives_of(objectives.for_pool(&pool)),
                rewrites: rewrites_of(rewrites.for_pool(&pool)),
            };
            out.send_if_modified(|cur| {
                let differs = *cur != next;
                if differs {
                    log::info!(
                        "pool {pool}: {} InferenceObjective(s), {} InferenceModelRewrite(s)",
                        next.objectives.len(),
                        next.rewrites.specs().len()
                    );
                    *cur = next;
                }
                differs
            });
        }
    }
}

/// True when `spec.poolRef` names `pool` in the InferencePool group (the CRDs default the group).
pub fn refers_to_pool(obj: &DynamicObject, pool: &str) -> bool {
    let pool_ref = obj.data.get("spec").and_then(|s| s.get("poolRef"));
    let name = pool_ref.and_then(|r| r.get("name")).and_then(Value::as_str);
    let group = pool_ref.and_then(|r| r.get("group")).and_then(Value::as_str).unwrap_or(POOL_GROUP);
    name == Some(pool) && group == POOL_GROUP
}

/// InferenceObjective → priority by `metadata.name` (the value of `x-gateway-inference-objective`); an
/// unset priority is 0.
pub fn objectives_of<'a>(objects: impl Iterator<Item = &'a DynamicObject>) -> ObjectivePriorities {
    let mut list = Vec::new();
    for obj in objects {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let priority = obj.data.get("spec").and_then(|s| s.get("priority"));
        let priority = match priority {
            None | Some(Value::Null) => 0,
            Some(v) => {
                match v.as_i64().and_then(|p| i32::try_from(p).ok()) {
                    Some(p) => p,
                    None => {
                        log::warn!("InferenceObjective {name}: spec.priority {v} is not a 32-bit integer; ignoring it");
                        continue;
                    }
                }
            }
        };
        list.push(Objective { name, priority });
    }
    ObjectivePriorities::new(list)
}

/// InferenceModelRewrite specs, oldest first (creation time, then name), each checked on its own so one
/// bad resource does not hide the others. As in llm-d-router, a target without a weight in a rule whose
/// other targets have one is never chosen, so it is dropped here.
pub fn rewrites_of<'a>(objects: impl Iterator<Item = &'a DynamicObject>) -> ModelRewrites {
    let mut objects: Vec<&DynamicObject> = objects.collect();
    objects.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let mut list = Vec::new();
    for obj in objects {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let rules = obj.data.get("spec").and_then(|s| s.get("rules")).cloned().unwrap_or(Value::Null);
        let mut spec = match InferenceModelRewrite::deserialize(serde_json::json!({ "rules": rules })) {
            Ok(spec) => spec,
            Err(e) => {
                log::warn!("InferenceModelRewrite {name}: unreadable spec.rules ({e}); ignoring it");
                continue;
            }
        };
        spec.name = Some(name.clone());
        for rule in &mut spec.rules {
            if rule.targets.iter().any(|t| t.weight.is_some())
                && rule.targets.iter().any(|t| t.weight.is_none())
            {
                log::warn!(
                    "InferenceModelRewrite {name}: targets without a weight beside weighted ones are never chosen"
                );
                rule.targets.retain(|t| t.weight.is_some());
            }
        }
        match ModelRewrites::new(vec![spec.clone()]) {
            Ok(_) => list.push(spec),
            Err(e) => log::warn!("InferenceModelRewrite {name}: {e}; ignoring it"),
        }
    }
    ModelRewrites::new(list).unwrap_or_default()
}

async fn next_event<K>(events: &mut Option<Events<K>>) -> Option<Result<Event<K>, watcher::Error>> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

fn pod_key(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn parse_spec(obj: &DynamicObject, name: &str) -> Option<PoolSpec> {
    let raw = obj.data.get("spec")?;
    match PoolSpec::deserialize(raw) {
        Ok(s) if !s.selector.match_labels.is_empty() && !s.target_ports.is_empty() => Some(s),
        Ok(_) => {
            log::warn!("InferencePool {name}: spec needs selector.matchLabels and targetPorts; ignoring it");
            None
        }
        Err(e) => {
            log::warn!("InferencePool {name}: unreadable spec ({e}); ignoring it");
            None
        }
    }
}

/// `k=v,k2=v2` for the pods watch.
pub fn label_selector(s: &Selector) -> String {
    s.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Every target port of every Ready, not-terminating pod with an IP whose labels match the selector,
/// sorted by address.
pub fn endpoints<'p>(spec: &PoolSpec, pods: impl Iterator<Item = &'p Pod>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let selected = spec.selector.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).filter(|ip| !ip.is_empty());
        let (Some(ip), true, true, None) = (ip, selected, ready, pod.metadata.deletion_timestamp.as_ref())
        else {
            continue;
        };
        let engine = ENGINE_LABELS
            .iter()
            .find_map(|k| labels.get(*k))
            .and_then(|e| Engine::parse(e))
            .unwrap_or_default();
        let role = labels.get(ROLE_LABEL).and_then(|r| Role::parse(r)).unwrap_or_default();
        for port in &spec.target_ports {
            let address = if ip.contains(':') {
                format!("[{ip}]:{}", port.number)
            } else {
                format!("{ip}:{}", port.number)
            };
            if validate_address(&address).is_err() {
                continue;
            }
            out.push(Endpoint {
                address,
                role,
                engine,
                labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            });
        }
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out.dedup_by(|a, b| a.address == b.address);
    out
}
