//! Where a request's fate is decided: routed (destination, fallbacks, prefill) or rejected (429 / 503).
//!
//! The filter and the shim call [`decide`] and turn the answer into headers or a local reply, so the
//! status codes below are the ones clients see (they follow GIE's picker, not its docs).

use crate::health::Exclusions;
use crate::model::PoolSnapshot;
use crate::rng::Rng;
use crate::scheduling::pipeline::Scheduler;
use crate::scheduling::{SchedulingContext, SchedulingRequest};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Why a request was not routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The pool has no endpoints.
    NoEndpoints,
    /// The gateway's subset hint was present but empty.
    EmptySubset,
    /// No endpoint of the pool is in the subset hint.
    SubsetNotInPool,
    /// Sheddable request while the pool is saturated.
    Saturated,
    /// Every candidate was filtered out (or scheduling failed otherwise).
    AllFiltered,
}

impl RejectReason {
    /// HTTP status GIE's picker returns for this reason.
    pub fn status(self) -> u16 {
        match self {
            RejectReason::NoEndpoints | RejectReason::EmptySubset | RejectReason::SubsetNotInPool => 503,
            RejectReason::Saturated | RejectReason::AllFiltered => 429,
        }
    }

    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoEndpoints => "no_endpoints",
            RejectReason::EmptySubset => "empty_subset",
            RejectReason::SubsetNotInPool => "subset_not_in_pool",
            RejectReason::Saturated => "saturated",
            RejectReason::AllFiltered => "all_filtered",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with the request.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Route {
        /// `ip:port` for `x-gateway-destination-endpoint`.
        destination: String,
        /// Further `ip:port`s to try in order (empty unless the picker returns several).
        fallbacks: Vec<String>,
        /// `ip:port` for `x-prefiller-host-port` (disaggregated prefill), when chosen.
        prefill: Option<String>,
        /// The request's prefix block hashes, recorded on the destination (and prefill) endpoint; a
        /// multi-worker proxy passes them to the other workers' [`Scheduler::learn_prefix`].
        prefix_hashes: Vec<u64>,
        /// Estimated prompt tokens the destination already holds (its prefix match when deciding).
        cached_tokens: u64,
    },
    Reject {
        status: u16,
        reason: RejectReason,
        /// One sentence for the client (goes into the OpenAI-shaped error body).
        message: String,
    },
}

impl Decision {
    fn reject(reason: RejectReason, message: String) -> Decision {
        Decision::Reject { status: reason.status(), reason, message }
    }
}

/// Host part of `ip:port` / `[v6]:port`.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

/// Whether a subset entry names `address`: exact `ip:port`, or a bare IP matching every port.
fn subset_entry_matches(entry: &str, address: &str) -> bool {
    if entry == address {
        return true;
    }
    let bare = if let Some(inner) = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')) {
        inner
    } else if entry.parse::<core::net::Ipv6Addr>().is_ok() || !entry.contains(':') {
        entry
    } else {
        return false;
    };
    !bare.is_empty() && bare == host_of(address)
}

/// Candidate indices allowed by the subset hint. Entries may themselves be comma-separated lists.
pub fn subset_candidates(pool: &PoolSnapshot, subset: &[&str]) -> Vec<usize> {
    let entries = || subset.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|e| !e.is_empty());
    pool.endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| entries().any(|entry| subset_entry_matches(entry, e.address())))
        .map(|(i, _)| i)
        .collect()
}

/// Admits one request and schedules it, or says why not (429 / 503). `subset` is the gateway's subset
/// hint: `None` when the key is absent.
pub fn admit(
    scheduler: &mut Scheduler,
    req: &SchedulingRequest<'_>,
    pool: &PoolSnapshot,
    subset: Option<&[&str]>,
    now_ms: u64,
    rng: &mut Rng,
) -> Decision {
    admit_excluding(scheduler, req, pool, subset, &Exclusions::default(), now_ms, rng)
}

/// [`admit`] leaving out the endpoints health excludes. When the subset hint names only excluded
/// endpoints, the exclusions give way: the gateway asked for those.
pub fn admit_excluding(
    scheduler: &mut Scheduler,
    req: &SchedulingRequest<'_>,
    pool: &PoolSnapshot,
    subset: Option<&[&str]>,
    exclusions: &Exclusions,
    now_ms: u64,
    rng: &mut Rng,
) -> Decision {
    admit_with(scheduler, req, pool, Admit { subset, exclusions, shed_sheddable: true }, now_ms, rng)
}

/// How [`admit_with`] admits.
#[derive(Clone, Copy, Debug)]
pub struct Admit<'a> {
    /// The gateway's subset hint; `None` when the key is absent.
    pub subset: Option<&'a [&'a str]>,
    pub exclusions: &'a Exclusions,
    /// Refuse a sheddable request (429) while the pool is saturated. False when flow control admitted
    /// it: the queue held it until the pool had room (llm-d buffers sheddable requests then).
    pub shed_sheddable: bool,
}

/// [`admit_excluding`], with the sheddable check optional.
pub fn admit_with(
    scheduler: &mut Scheduler,
    req: &SchedulingRequest<'_>,
    pool: &PoolSnapshot,
    how: Admit<'_>,
    now_ms: u64,
    rng: &mut Rng,
) -> Decision {
    let Admit { subset, exclusions, shed_sheddable } = how;
    if pool.endpoints.is_empty() {
        return Decision::reject(
            RejectReason::NoEndpoints,
            String::from("no model server endpoints are available"),
        );
    }
    let candidates: Vec<usize> = match subset {
        None => (0..pool.endpoints.len()).collect(),
        Some(s) if s.iter().all(|e| e.split(',').all(|p| p.trim().is_empty())) => {
            return Decision::reject(
                RejectReason::EmptySubset,
                String::from("the gateway's endpoint subset is empty"),
            )
        }
        Some(s) => {
            let c = subset_candidates(pool, s);
            if c.is_empty() {
                return Decision::reject(
                    RejectReason::SubsetNotInPool,
                    String::from("none of the gateway's subset endpoints is in the pool"),
                );
            }
            c
        }
    };
    let candidates = if exclusions.count > 0 {
        let healthy: Vec<usize> =
            candidates.iter().copied().filter(|&i| !exclusions.is_excluded(i)).collect();
        if healthy.is_empty() {
            candidates
        } else {
            healthy
        }
    } else {
        candidates
    };
    let ctx = SchedulingContext { request: req, pool, now_ms };
    if req.priority < 0 && shed_sheddable {
        if let Some(saturation) = scheduler.saturation(&ctx) {
            if saturation >= 1.0 {
                return Decision::reject(
                    RejectReason::Saturated,
                    format!("the pool is saturated ({saturation:.2}) and the request is sheddable"),
                );
            }
        }
    }
    // llm-d's admitters (probabilistic-admitter) then judge the request on its candidates.
    if let Some(message) = refused_by_admitter(scheduler, &ctx, &candidates, rng) {
        return Decision::reject(RejectReason::Saturated, message);
    }
    // GIE answers every scheduler failure with 429.
    let result = match scheduler.schedule(&ctx, &candidates, rng) {
        Ok(r) => r,
        Err(e) => return Decision::reject(RejectReason::AllFiltered, e.to_string()),
    };
    let address = |i: usize| pool.endpoints.get(i).map(|e| String::from(e.address()));
    let mut targets = result.targets.iter().filter_map(|&i| address(i));
    let Some(destination) = targets.next() else {
        return Decision::reject(RejectReason::AllFiltered, String::from("the scheduler chose no endpoint"));
    };
    let prefill = result.prefill.and_then(address);
    Decision::Route {
        destination,
        fallbacks: targets.collect(),
        prefill,
        prefix_hashes: result.prefix_hashes,
        cached_tokens: result.cached_tokens,
    }
}

/// The first configured admitter's refusal, if one refuses.
fn refused_by_admitter(
    scheduler: &Scheduler,
    ctx: &SchedulingContext<'_>,
    candidates: &[usize],
    rng: &mut Rng,
) -> Option<String> {
    let mut admitters =
        scheduler.plugin_names().iter().filter_map(|n| scheduler.plugin(n)).filter_map(|p| p.as_admitter());
    admitters.find_map(|a| a.admit(ctx, candidates, rng).err())
}

#[cfg(test)]
mod tests;
