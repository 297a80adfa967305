//! The few host services the filter's logic needs (clock, shared data with CAS, shared queues, HTTP
//! callouts, metrics), behind one trait: the Wasm build implements it over the raw host calls, native
//! unit tests over [`fake::FakeHost`], so the logic is tested without a proxy.

use core::fmt;

/// Why a host call did not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// A compare-and-swap write lost against another writer.
    CasMismatch,
    /// The thing named (queue, cluster, metric) does not exist.
    NotFound,
    /// The host refused the arguments (e.g. an unknown cluster for a callout).
    BadArgument,
    /// Any other status, by its ABI code.
    Status(u32),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::CasMismatch => f.write_str("compare-and-swap mismatch"),
            HostError::NotFound => f.write_str("not found"),
            HostError::BadArgument => f.write_str("bad argument"),
            HostError::Status(s) => write!(f, "host status {s}"),
        }
    }
}

/// A shared-data value and the CAS token to write it back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shared {
    /// Empty for a value written empty (ABI 0.2.1 has no delete).
    pub value: Vec<u8>,
    pub cas: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// A `GET` callout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpGet<'a> {
    pub cluster: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    /// Extra headers, e.g. the ORIGINAL_DST host header naming the pod.
    pub headers: &'a [(&'a str, &'a str)],
    pub timeout_ms: u64,
}

/// The host as the filter's logic sees it. Every call can fail; callers degrade instead of trapping.
pub trait Host {
    /// Proxy wall clock, ms since the Unix epoch (0 if unreadable).
    fn now_ms(&self) -> u64;
    /// The same clock in µs, for timing a decision (a ms clock would round nearly every one to 0).
    fn now_us(&self) -> u64 {
        self.now_ms().saturating_mul(1_000)
    }
    /// `Ok(None)` when the key was never written.
    fn shared_get(&self, key: &str) -> Result<Option<Shared>, HostError>;
    /// `cas: None` writes unconditionally; `Some` fails with [`HostError::CasMismatch`] if the value
    /// changed since it was read (a missing key is created whatever the cas: Envoy's rule).
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError>;
    /// Registers a queue this VM receives `on_queue_ready` for.
    fn queue_register(&self, name: &str) -> Result<u32, HostError>;
    /// Finds another VM's queue by name (same vm_id).
    fn queue_resolve(&self, name: &str) -> Result<Option<u32>, HostError>;
    fn queue_enqueue(&self, queue: u32, value: &[u8]) -> Result<(), HostError>;
    fn queue_dequeue(&self, queue: u32) -> Result<Option<Vec<u8>>, HostError>;
    /// Dispatches a callout; the answer arrives later with the returned token.
    fn http_get(&self, request: &HttpGet<'_>) -> Result<u32, HostError>;
    fn metric_define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    fn metric_add(&self, id: u32, delta: i64) -> Result<(), HostError>;
    fn metric_record(&self, id: u32, value: u64) -> Result<(), HostError>;
}

#[cfg(test)]
pub mod fake {
    //! An in-memory host with Envoy's shared-data rules. Clones share one process (shared data, queues,
    //! clock, callouts, metrics), so two clones behave like two worker VMs.

    use super::*;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, VecDeque};
    use std::rc::Rc;

    /// A recorded callout: (token, cluster, authority, path, extra headers).
    pub type Call = (u32, String, String, String, Vec<(String, String)>);

    #[derive(Default)]
    pub struct World {
        pub now_ms: u64,
        pub shared: BTreeMap<String, (Vec<u8>, u32)>,
        next_cas: u32,
        pub queues: BTreeMap<u32, (String, VecDeque<Vec<u8>>)>,
        pub calls: Vec<Call>,
        next_token: u32,
        pub metrics: BTreeMap<String, i64>,
        metric_names: Vec<String>,
        /// Fail the next N shared writes with this error.
        pub fail_sets: Option<(HostError, u32)>,
        /// Fail the next N shared reads with this error.
        pub fail_gets: Option<(HostError, u32)>,
    }

    #[derive(Clone, Default)]
    pub struct FakeHost {
        pub world: Rc<RefCell<World>>,
    }

    impl FakeHost {
        pub fn set_now(&self, ms: u64) {
            self.world.borrow_mut().now_ms = ms;
        }
        pub fn advance(&self, ms: u64) {
            self.world.borrow_mut().now_ms += ms;
        }
        pub fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.world.borrow().shared.get(key).map(|(v, _)| v.clone())
        }
        pub fn put(&self, key: &str, value: &[u8]) {
            self.shared_set(key, value, None).unwrap();
        }
        pub fn metric(&self, name: &str) -> i64 {
            self.world.borrow().metrics.get(name).copied().unwrap_or(0)
        }
        pub fn calls(&self) -> Vec<Call> {
            self.world.borrow().calls.clone()
        }
    }

    impl Host for FakeHost {
        fn now_ms(&self) -> u64 {
            self.world.borrow().now_ms
        }
        fn shared_get(&self, key: &str) -> Result<Option<Shared>, HostError> {
            let mut w = self.world.borrow_mut();
            if let Some((err, n)) = w.fail_gets {
                w.fail_gets = (n > 1).then_some((err, n - 1));
                return Err(err);
            }
            drop(w);
            Ok(self.world.borrow().shared.get(key).map(|(v, c)| Shared { value: v.clone(), cas: Some(*c) }))
        }
        fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
            let mut w = self.world.borrow_mut();
            if let Some((err, n)) = w.fail_sets {
                w.fail_sets = (n > 1).then_some((err, n - 1));
                return Err(err);
            }
            if let (Some((_, current)), Some(cas)) = (w.shared.get(key), cas) {
                if *current != cas {
                    return Err(HostError::CasMismatch);
                }
            }
            w.next_cas += 1;
            let fresh = w.next_cas;
            w.shared.insert(key.to_string(), (value.to_vec(), fresh));
            Ok(())
        }
        fn queue_register(&self, name: &str) -> Result<u32, HostError> {
            let mut w = self.world.borrow_mut();
            if let Some((id, _)) = w.queues.iter().find(|(_, (n, _))| n == name) {
                return Ok(*id);
            }
            let id = w.queues.len() as u32 + 1;
            w.queues.insert(id, (name.to_string(), VecDeque::new()));
            Ok(id)
        }
        fn queue_resolve(&self, name: &str) -> Result<Option<u32>, HostError> {
            Ok(self.world.borrow().queues.iter().find(|(_, (n, _))| n == name).map(|(id, _)| *id))
        }
        fn queue_enqueue(&self, queue: u32, value: &[u8]) -> Result<(), HostError> {
            let mut w = self.world.borrow_mut();
            let q = w.queues.get_mut(&queue).ok_or(HostError::NotFound)?;
            q.1.push_back(value.to_vec());
            Ok(())
        }
        fn queue_dequeue(&self, queue: u32) -> Result<Option<Vec<u8>>, HostError> {
            let mut w = self.world.borrow_mut();
            let q = w.queues.get_mut(&queue).ok_or(HostError::NotFound)?;
            Ok(q.1.pop_front())
        }
        fn http_get(&self, r: &HttpGet<'_>) -> Result<u32, HostError> {
            let mut w = self.world.borrow_mut();
            if r.cluster.is_empty() {
                return Err(HostError::BadArgument);
            }
            w.next_token += 1;
            let token = w.next_token;
            let headers = r.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            w.calls.push((token, r.cluster.into(), r.authority.into(), r.path.into(), headers));
            Ok(token)
        }
        fn metric_define(&self, _kind: MetricKind, name: &str) -> Result<u32, HostError> {
            let mut w = self.world.borrow_mut();
            if let Some(i) = w.metric_names.iter().position(|n| n == name) {
                return Ok(i as u32);
            }
            w.metric_names.push(name.to_string());
            w.metrics.insert(name.to_string(), 0);
            Ok(w.metric_names.len() as u32 - 1)
        }
        fn metric_add(&self, id: u32, delta: i64) -> Result<(), HostError> {
            let mut w = self.world.borrow_mut();
            let name = w.metric_names.get(id as usize).cloned().ok_or(HostError::NotFound)?;
            *w.metrics.entry(name).or_default() += delta;
            Ok(())
        }
        fn metric_record(&self, id: u32, value: u64) -> Result<(), HostError> {
            let mut w = self.world.borrow_mut();
            let name = w.metric_names.get(id as usize).cloned().ok_or(HostError::NotFound)?;
            w.metrics.insert(name, value as i64);
            Ok(())
        }
    }
}
