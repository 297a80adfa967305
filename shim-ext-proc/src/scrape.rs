//! The scrape loop: every endpoint's `/metrics` on its own timer (default every 50 ms, 1 s timeout),
//! at most N in flight at once, parsed by the core and recorded in the [`Pool`]; a publisher turns the
//! pool into a new snapshot generation on the same period.

use crate::endpoints::Discovered;
use crate::metrics::Metrics;
use crate::pool::Pool;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scheduler_core::metrics_text::{read_scrape, ScrapeFailure};
use scheduler_core::model::Endpoint;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// A metrics page larger than this is not a model server's (vLLM's is ~100 KB with histograms).
const MAX_METRICS_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ScrapeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub max_concurrent: usize,
    pub metrics_path: String,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Runs until the discovery channel closes: reconciles one scrape task per endpoint and publishes.
pub async fn run(
    pool: Arc<Pool>,
    mut discovered: watch::Receiver<Discovered>,
    settings: ScrapeSettings,
    metrics: Arc<Metrics>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.timeout));
    let client: HttpClient =
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
    let limit = Arc::new(Semaphore::new(settings.max_concurrent.max(1)));
    let publisher = tokio::spawn(publish_loop(Arc::clone(&pool), settings.interval));
    let mut tasks: HashMap<String, (Endpoint, JoinHandle<()>)> = HashMap::new();
    loop {
        let list = discovered.borrow_and_update().clone();
        if let Some(list) = list {
            pool.set_endpoints(&list);
            tasks.retain(|addr, (ep, task)| {
                let keep = list.iter().any(|e| e == ep && &e.address == addr);
                if !keep {
                    task.abort();
                }
                keep
            });
            for ep in list {
                if tasks.contains_key(&ep.address) {
                    continue;
                }
                let task = tokio::spawn(scrape_one(
                    ep.clone(),
                    client.clone(),
                    Arc::clone(&limit),
                    Arc::clone(&pool),
                    settings.clone(),
                    Arc::clone(&metrics),
                ));
                tasks.insert(ep.address.clone(), (ep, task));
            }
            pool.publish(crate::unix_ms());
        }
        if discovered.changed().await.is_err() {
            break;
        }
    }
    for (_, (_, task)) in tasks {
        task.abort();
    }
    publisher.abort();
}

async fn publish_loop(pool: Arc<Pool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_synced() {
            pool.publish(crate::unix_ms());
        }
    }
}

async fn scrape_one(
    ep: Endpoint,
    client: HttpClient,
    limit: Arc<Semaphore>,
    pool: Arc<Pool>,
    settings: ScrapeSettings,
    metrics: Arc<Metrics>,
) {
    let url = format!("http://{}{}", ep.address, settings.metrics_path);
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        log::error!("endpoint {}: {url} is not a valid URL; not scraping it", ep.address);
        return;
    };
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        tick.tick().await;
        let Ok(permit) = limit.acquire().await else { return };
        let body = tokio::time::timeout(settings.timeout, fetch(&client, uri.clone())).await;
        drop(permit);
        let result = match body {
            Ok(Ok((status, bytes))) => {
                read_scrape(ep.engine, Some(status), &bytes, crate::unix_ms()).map(|p| p.metrics)
            }
            Ok(Err(e)) => Err(ScrapeFailure::Unreachable(e)),
            Err(_) => Err(ScrapeFailure::TimedOut { after_ms: settings.timeout.as_millis() as u64 }),
        };
        metrics.record_scrape(result.is_ok());
        if matches!(result, Err(ScrapeFailure::MissingGauges(_))) {
            metrics.record_missing_gauges();
        }
        match &result {
            Ok(_) => last_error.clear(),
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    log::warn!("scraping {url}: {e}");
                    last_error = e;
                }
            }
        }
        pool.record_scrape(&ep.address, result);
    }
}

/// The status and body of `GET uri` (the body is not read unless the status is 200).
async fn fetch(client: &HttpClient, uri: hyper::Uri) -> Result<(u16, Bytes), String> {
    let resp = client.get(uri).await.map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Ok((status, Bytes::new()));
    }
    let body = Limited::new(resp.into_body(), MAX_METRICS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((status, body.to_bytes()))
}
