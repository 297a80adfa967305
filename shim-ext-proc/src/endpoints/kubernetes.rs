//! Discovery from Kubernetes: watch one InferencePool (`inference.networking.k8s.io/v1`) and the pods
//! its selector matches; every target port of every Ready, not-terminating pod is an endpoint, with
//! the engine from the pod label `inference.networking.k8s.io/engine-type`.
//!
//! kube-rs does the list+watch bookkeeping (resource versions, re-lists, backoff); this module only
//! turns the two object streams into endpoint lists.

use super::Discovered;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};
use scheduler_core::model::{validate_address, Endpoint, Engine, Role};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};

pub const ENGINE_LABEL: &str = "inference.networking.k8s.io/engine-type";
/// llm-d's disaggregated-serving role label (`prefill`, `decode`, `both`).
pub const ROLE_LABEL: &str = "llm-d.ai/role";

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

/// Watches until the task is dropped, publishing each complete endpoint list on `tx`.
pub async fn run(settings: KubeSettings, tx: watch::Sender<Discovered>) -> Result<(), KubeError> {
    let config = match &settings.api_url {
        Some(url) => Config::new(url.parse().map_err(|_| KubeError::Url(url.clone()))?),
        None => Config::infer().await.map_err(|e| KubeError::Config(e.to_string()))?,
    };
    let namespace = settings.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(KubeError::Client)?;
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
        let engine = labels.get(ENGINE_LABEL).and_then(|e| Engine::parse(e)).unwrap_or_default();
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
