//! Shared data and queues across VMs, with Envoy's CAS rules, and the odd corners of the ABI.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{plugin, post_with};
use proxy_wasm_emulator::{Host, HttpStream, VmId};

fn op(host: &mut Host, vm: VmId, headers: &[(&str, &str)]) -> HttpStream {
    let s = host.start_request(vm, &post_with(headers), true).unwrap();
    host.stream(s)
}

fn body(s: &HttpStream) -> String {
    String::from_utf8_lossy(&s.local_reply.as_ref().unwrap().body).into_owned()
}

#[test]
fn two_worker_vms_share_data_and_cas_rejects_a_stale_write() {
    let mut host = Host::new();
    let a = host.start_vm(plugin("shared")).unwrap();
    let b = host.start_vm(plugin("shared")).unwrap();
    assert_eq!(body(&op(&mut host, a, &[("x-op", "incr")])), "1");
    assert_eq!(body(&op(&mut host, b, &[("x-op", "incr")])), "2");
    // VM a reads (remembering cas), VM b writes in between, a's write with the stale cas fails.
    assert_eq!(body(&op(&mut host, a, &[("x-op", "read")])), "some:2 cas=2");
    assert_eq!(body(&op(&mut host, b, &[("x-op", "incr")])), "3");
    let stale = op(&mut host, a, &[("x-op", "write"), ("x-value", "99")]);
    assert_eq!((stale.response_status(), body(&stale).as_str()), (Some(409), "cas mismatch"));
    assert_eq!(host.shared_data("epp", "counter"), Some((b"3".to_vec(), 3)));
    // Re-read, then the write goes through.
    op(&mut host, a, &[("x-op", "read")]);
    assert_eq!(body(&op(&mut host, a, &[("x-op", "write"), ("x-value", "99")])), "written");
    assert_eq!(host.shared_data("epp", "counter"), Some((b"99".to_vec(), 4)));
}

#[test]
fn a_different_vm_id_does_not_see_the_data() {
    let mut host = Host::new();
    let a = host.start_vm(plugin("shared")).unwrap();
    let other = host.start_vm(plugin("shared").vm_id("other")).unwrap();
    op(&mut host, a, &[("x-op", "incr")]);
    assert_eq!(body(&op(&mut host, other, &[("x-op", "read")])), "none cas=0");
}

#[test]
fn missing_key_is_created_whatever_the_cas() {
    let mut host = Host::new();
    let a = host.start_vm(plugin("shared")).unwrap();
    // Remember cas 1 from a key that exists, then write a key that does not exist with it.
    host.set_shared_data("epp", "seed", b"x");
    op(&mut host, a, &[("x-op", "read"), ("x-key", "seed")]);
    let w = op(&mut host, a, &[("x-op", "write"), ("x-key", "fresh"), ("x-value", "v")]);
    assert_eq!(body(&w), "written");
    assert_eq!(host.shared_data("epp", "fresh"), Some((b"v".to_vec(), 2)));
}

#[test]
fn empty_shared_value_comes_back_as_pointer_zero_with_its_cas() {
    let mut host = Host::new();
    let a = host.start_vm(plugin("shared")).unwrap();
    op(&mut host, a, &[("x-op", "remove"), ("x-key", "gone")]);
    // The SDK turns (ptr 0, size 0, cas) into (None, Some(cas)).
    assert_eq!(body(&op(&mut host, a, &[("x-op", "read"), ("x-key", "gone")])), "none cas=1");
    assert_eq!(host.shared_data("epp", "gone"), Some((Vec::new(), 1)));
}

#[test]
fn shared_queue_notifies_the_owner_vm() {
    let mut host = Host::new();
    let owner = host.start_vm(plugin("queue-owner")).unwrap();
    let worker = host.start_vm(plugin("shared")).unwrap();
    assert_ne!(owner, worker);
    let r = op(&mut host, worker, &[("x-op", "enqueue"), ("x-value", "job-1")]);
    assert_eq!(body(&r), "enqueued to 1");
    op(&mut host, worker, &[("x-op", "enqueue"), ("x-value", "job-2")]);
    assert_eq!(host.shared_data("epp", "jobs-seen").unwrap().0, b"job-1;job-2;");
    assert_eq!(host.queue_len("epp", "jobs"), Some(0));
}

#[test]
fn enqueue_without_a_registered_queue_is_not_found() {
    let mut host = Host::new();
    let worker = host.start_vm(plugin("shared")).unwrap();
    let r = op(&mut host, worker, &[("x-op", "enqueue")]);
    assert_eq!((r.response_status(), body(&r).as_str()), (Some(404), "no queue"));
}

#[test]
fn unknown_import_is_linked_and_answers_unimplemented() {
    let mut host = Host::new();
    let vm = host.start_vm(plugin("shared")).unwrap();
    let stubbed = host.stubbed_imports(vm);
    // The SDK's gRPC imports are stubbed too: the harness does not emulate gRPC.
    assert!(stubbed.contains(&"env::proxy_fixture_unknown_call".to_string()), "{stubbed:?}");
    assert!(stubbed.iter().all(|s| s.starts_with("env::proxy_grpc_") || s.ends_with("unknown_call")));
    assert_eq!(body(&op(&mut host, vm, &[("x-op", "unknown-import")])), "status=12");
    assert_eq!(host.host_calls("env::proxy_fixture_unknown_call").len(), 1);
}

#[test]
fn wasi_random_and_virtual_time_are_deterministic() {
    let mut host = Host::builder().seed(42).start_time_unix_ns(5_000_000_000).build();
    let vm = host.start_vm(plugin("shared")).unwrap();
    assert_eq!(body(&op(&mut host, vm, &[("x-op", "hashmap")])), "entries=1");
    assert_eq!(body(&op(&mut host, vm, &[("x-op", "time")])), "now=5000000000");
    host.advance(std::time::Duration::from_millis(1500));
    assert_eq!(body(&op(&mut host, vm, &[("x-op", "time")])), "now=6500000000");
}
