//! How Envoy's filter manager moves a stream through the Wasm filter: lazy context creation, pause and
//! resume on headers and body, buffering against the limit, deferred continue / local reply / reset,
//! local replies passing through the filter's response callbacks, failure policy, and on_log/on_done.

use super::abi::{self, Headers};
use super::callouts::CalloutState;
use super::http::{Dir, HttpStream, LocalReply, LocalReplySource, Message, Phase, StreamId};
use super::vm::{len_i32, CallResult, Deferred};
use super::{FailurePolicy, HarnessError, Host, VmId};

impl Host {
    /// Sends request headers to a worker VM: Envoy creates the stream context and calls
    /// `on_request_headers`. Returns the new stream's id.
    pub fn start_request(
        &mut self,
        vm: VmId,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<StreamId, HarnessError> {
        match self.vms.get(vm.0) {
            None => return Err(HarnessError::UnknownVm(vm)),
            Some(v) if v.stopped => return Err(HarnessError::VmStopped(vm)),
            Some(_) => {}
        }
        let id = {
            let mut w = self.world();
            let id = StreamId(w.streams.len());
            let mut s = HttpStream::new(id, vm);
            let d = &mut s.req;
            d.headers = abi::headers(headers);
            d.end_of_stream = end_of_stream;
            w.streams.push(s);
            id
        };
        self.ensure_live(vm);
        let created = self.vms.get_mut(vm.0).and_then(|v| {
            let generation = v.generation;
            let live = v.live.as_mut()?;
            let data = live.store.data_mut();
            let ctx = data.next_context_id;
            data.next_context_id += 1;
            data.stream_of_context.insert(ctx, id);
            Some((ctx, data.root_context_id, generation))
        });
        match created {
            None => self.stream_vm_failed(id),
            Some((ctx, root, generation)) => {
                if let Some(s) = self.world().stream_mut(id) {
                    s.context_id = Some(ctx);
                    s.generation = generation;
                }
                match self.call(vm, "proxy_on_context_create", ctx, &[ctx as i32, root as i32]) {
                    CallResult::Trapped => self.stream_vm_failed(id),
                    _ => self.filter_headers(id, Dir::Request),
                }
            }
        }
        self.flush_deferred();
        self.run();
        Ok(id)
    }

    /// Sends a request body chunk from the client.
    pub fn request_body(
        &mut self,
        id: StreamId,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<(), HarnessError> {
        self.body_from_peer(id, Dir::Request, chunk, end_of_stream)
    }

    /// A whole request: headers, then the body as one chunk (headers end the stream when it is empty).
    pub fn request(
        &mut self,
        vm: VmId,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<StreamId, HarnessError> {
        let id = self.start_request(vm, headers, body.is_empty())?;
        if !body.is_empty() {
            self.request_body(id, body, true)?;
        }
        Ok(id)
    }

    /// Response headers from the upstream.
    pub fn response_headers(
        &mut self,
        id: StreamId,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<(), HarnessError> {
        {
            let mut w = self.world();
            let s = w.stream_mut(id).ok_or(HarnessError::UnknownStream(id))?;
            if s.upstream_request.is_none() {
                return Err(HarnessError::ResponseBeforeRequest(id));
            }
            if s.completed || s.reset || s.local_reply.is_some() {
                w.note(None, format!("stream {}: upstream response ignored, the stream already ended", id.0));
                return Ok(());
            }
            let d = &mut s.resp;
            d.headers = abi::headers(headers);
            d.end_of_stream = end_of_stream;
        }
        self.filter_headers(id, Dir::Response);
        self.flush_deferred();
        self.run();
        Ok(())
    }

    /// A response body chunk from the upstream.
    pub fn response_body(
        &mut self,
        id: StreamId,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<(), HarnessError> {
        self.body_from_peer(id, Dir::Response, chunk, end_of_stream)
    }

    /// A whole upstream response: `:status`, `content-length`, then the body as one chunk.
    pub fn respond(&mut self, id: StreamId, status: u16, body: &[u8]) -> Result<(), HarnessError> {
        let status = status.to_string();
        let len = body.len().to_string();
        self.response_headers(id, &[(":status", &status), ("content-length", &len)], body.is_empty())?;
        if !body.is_empty() {
            self.response_body(id, body, true)?;
        }
        Ok(())
    }

    /// The client goes away (or the test aborts the stream): on_log, on_done, on_delete run.
    pub fn reset_stream(&mut self, id: StreamId) -> Result<(), HarnessError> {
        if self.world().stream(id).is_none() {
            return Err(HarnessError::UnknownStream(id));
        }
        self.reset(id);
        self.run();
        Ok(())
    }

    // ---- internals ------------------------------------------------------------------------------------

    pub(super) fn apply(&mut self, action: Deferred) {
        match action {
            Deferred::ContinueRequest(id) => self.resume(id, Dir::Request),
            Deferred::ContinueResponse(id) => self.resume(id, Dir::Response),
            Deferred::LocalReply(id, reply) => self.local_reply(id, reply),
            Deferred::Reset(id) => self.reset(id),
        }
        self.flush_deferred();
    }

    /// The (vm, context) to call for this stream, if the filter is live for it.
    fn filter_of(&self, id: StreamId) -> Option<(VmId, u32)> {
        let w = self.world();
        let s = w.stream(id)?;
        let ctx = s.context_id?;
        if s.bypassed {
            return None;
        }
        let v = self.vms.get(s.vm.0)?;
        (v.live.is_some() && v.generation == s.generation).then_some((s.vm, ctx))
    }

    fn stream_bypassed(&self, id: StreamId) -> bool {
        self.world().stream(id).is_none_or(|s| s.bypassed)
    }

    /// True when the callback just run asked for a local reply or reset of this stream: Envoy applies
    /// those before looking at the callback's return value, which then no longer matters.
    fn pending_ends_stream(&self, id: StreamId) -> bool {
        self.pending.iter().any(|a| matches!(a, Deferred::LocalReply(s, _) | Deferred::Reset(s) if *s == id))
    }

    fn with_stream<T>(&self, id: StreamId, f: impl FnOnce(&mut HttpStream) -> T) -> Option<T> {
        self.world().stream_mut(id).map(f)
    }

    /// The filter to call for `id`; `None` once the stream was passed through (the plugin is bypassed) or
    /// failed (its VM is gone).
    fn filter_or_settle(&mut self, id: StreamId, dir: Dir) -> Option<(VmId, u32)> {
        let found = self.filter_of(id);
        if found.is_none() {
            if self.stream_bypassed(id) {
                self.pass_through(id, dir);
            } else {
                self.stream_vm_failed(id);
            }
        }
        found
    }

    /// Calls a stream callback with `(context, len, end_of_stream)`; `None` when the VM trapped (the
    /// stream is failed) or the callback ended the stream (local reply, close).
    fn stream_callback(
        &mut self,
        id: StreamId,
        vm: VmId,
        ctx: u32,
        name: &'static str,
        len: usize,
        eos: bool,
    ) -> Option<i64> {
        let code = match self.call(vm, name, ctx, &[ctx as i32, len_i32(len), i32::from(eos)]) {
            CallResult::Trapped => {
                self.stream_vm_failed(id);
                return None;
            }
            CallResult::Missing => 0,
            CallResult::Returned(r) => r.unwrap_or(0),
        };
        (!self.pending_ends_stream(id)).then_some(code)
    }

    pub(super) fn filter_headers(&mut self, id: StreamId, dir: Dir) {
        let Some((vm, ctx)) = self.filter_or_settle(id, dir) else { return };
        let Some((n, eos)) = self.with_stream(id, |s| {
            let d = s.dir_mut(dir);
            d.headers_available = true;
            (d.headers.len(), d.end_of_stream)
        }) else {
            return;
        };
        let Some(code) = self.stream_callback(id, vm, ctx, dir.headers_callback(), n, eos) else { return };
        let allow = self.vms.get(vm.0).is_some_and(|v| v.plugin.allow_on_headers_stop_iteration);
        match code {
            // Continue (and ContinueAndDontEndStream): the headers go on and Envoy forgets the map.
            0 | 2 => {
                self.with_stream(id, |s| {
                    let d = s.dir_mut(dir);
                    d.headers_available = false;
                    d.phase = Phase::Continued;
                });
                self.forward_headers(id, dir);
            }
            // StopIteration: honoured only with allow_on_headers_stop_iteration; otherwise Envoy turns it
            // into StopAllIterationAndWatermark, and the body waits for the resume.
            1 => {
                self.with_stream(id, |s| {
                    s.dir_mut(dir).phase = Phase::HeadersPaused { body_reaches_filter: allow }
                });
            }
            _ => {
                self.with_stream(id, |s| {
                    s.dir_mut(dir).phase = Phase::HeadersPaused { body_reaches_filter: false }
                });
            }
        }
    }

    fn body_from_peer(
        &mut self,
        id: StreamId,
        dir: Dir,
        chunk: &[u8],
        eos: bool,
    ) -> Result<(), HarnessError> {
        enum Next {
            Ignore,
            PassThrough,
            Held,
            Filter,
            TooLarge,
        }
        let limit = self.world().buffer_limit;
        let next = {
            let mut w = self.world();
            let s = w.stream_mut(id).ok_or(HarnessError::UnknownStream(id))?;
            let ended = s.completed
                || s.reset
                || match dir {
                    Dir::Request => s.local_reply.is_some(),
                    Dir::Response => s.local_reply.is_some() && !s.sending_local_reply,
                };
            let bypassed = s.bypassed;
            let d = s.dir_mut(dir);
            if ended || d.phase == Phase::Closed {
                Next::Ignore
            } else if d.phase == Phase::Idle && !(bypassed && d.headers_forwarded) {
                return Err(HarnessError::BodyBeforeHeaders(id));
            } else if bypassed {
                Next::PassThrough
            } else {
                match d.phase {
                    Phase::HeadersPaused { body_reaches_filter: false } => {
                        d.held.extend_from_slice(chunk);
                        d.held_end_of_stream = eos;
                        Next::Held
                    }
                    Phase::BodyBuffering => {
                        d.buffer.extend_from_slice(chunk);
                        d.end_of_stream = eos;
                        if d.buffer.len() > limit {
                            Next::TooLarge
                        } else {
                            Next::Filter
                        }
                    }
                    _ => {
                        d.buffer = chunk.to_vec();
                        d.end_of_stream = eos;
                        Next::Filter
                    }
                }
            }
        };
        match next {
            Next::Ignore => self
                .world()
                .note(None, format!("stream {}: {dir:?} body ignored, the stream already ended", id.0)),
            Next::PassThrough => self.forward_body(id, dir, chunk.to_vec(), eos),
            Next::Held => {}
            Next::Filter => self.filter_body(id, dir),
            Next::TooLarge => self.too_large(id, dir),
        }
        self.flush_deferred();
        self.run();
        Ok(())
    }

    /// Calls the body callback with what the filter sees now, then acts on its answer.
    fn filter_body(&mut self, id: StreamId, dir: Dir) {
        let Some((vm, ctx)) = self.filter_or_settle(id, dir) else { return };
        let Some((len, eos)) = self.with_stream(id, |s| {
            let d = s.dir_mut(dir);
            d.body_available = true;
            (d.buffer.len(), d.end_of_stream)
        }) else {
            return;
        };
        let Some(code) = self.stream_callback(id, vm, ctx, dir.body_callback(), len, eos) else { return };
        if code == 0 {
            self.release(id, dir);
            return;
        }
        let limit = self.world().buffer_limit;
        let over = self
            .with_stream(id, |s| {
                let d = s.dir_mut(dir);
                d.phase = Phase::BodyBuffering;
                d.buffer.len() > limit
            })
            .unwrap_or(false);
        if over {
            self.too_large(id, dir);
        }
    }

    /// Lets through the headers (if still held) and the buffered body.
    fn release(&mut self, id: StreamId, dir: Dir) {
        let Some((forward_headers, body, eos)) = self.with_stream(id, |s| {
            let d = s.dir_mut(dir);
            d.phase = Phase::Continued;
            d.body_available = false;
            (!d.headers_forwarded, std::mem::take(&mut d.buffer), d.end_of_stream)
        }) else {
            return;
        };
        if forward_headers {
            self.forward_headers(id, dir);
        }
        self.forward_body(id, dir, body, eos);
    }

    /// A deferred `proxy_continue_stream`.
    fn resume(&mut self, id: StreamId, dir: Dir) {
        let phase = self.with_stream(id, |s| {
            let ended = s.completed || s.reset || (dir == Dir::Request && s.local_reply.is_some());
            if ended {
                Phase::Closed
            } else {
                s.dir(dir).phase
            }
        });
        match phase {
            Some(Phase::HeadersPaused { .. }) => {
                let held = self.with_stream(id, |s| {
                    let d = s.dir_mut(dir);
                    d.phase = Phase::Continued;
                    let held = std::mem::take(&mut d.held);
                    let held_eos = std::mem::take(&mut d.held_end_of_stream);
                    if !held.is_empty() || held_eos {
                        d.buffer = held;
                        d.end_of_stream = held_eos;
                        true
                    } else {
                        false
                    }
                });
                self.forward_headers(id, dir);
                // After StopAllIteration Envoy hands the filter the body it held back.
                if held == Some(true) {
                    self.filter_body(id, dir);
                }
            }
            Some(Phase::BodyBuffering) => self.release(id, dir),
            _ => {
                self.world().note(None, format!("stream {}: continue of {dir:?} had nothing to resume", id.0))
            }
        }
    }

    fn forward_headers(&mut self, id: StreamId, dir: Dir) {
        let completes = {
            let mut w = self.world();
            let dst_header = w.original_dst_header.clone();
            let Some(s) = w.stream_mut(id) else { return };
            let d = s.dir_mut(dir);
            if d.headers_forwarded {
                return;
            }
            d.headers_forwarded = true;
            let eos = d.end_of_stream
                && d.buffer.is_empty()
                && d.held.is_empty()
                && d.phase != Phase::BodyBuffering;
            let headers: Headers = d.headers.clone();
            if dir == Dir::Request {
                if let Some(h) = dst_header {
                    s.upstream_address = abi::header_value(&headers, &h).map(str::to_string);
                }
            }
            *s.sink_mut(dir) = Some(Message { headers, body: Vec::new(), end_of_stream: eos });
            dir == Dir::Response && eos
        };
        if completes {
            self.complete(id);
        }
    }

    fn forward_body(&mut self, id: StreamId, dir: Dir, body: Vec<u8>, eos: bool) {
        let completes = self
            .with_stream(id, |s| {
                let Some(m) = s.sink_mut(dir).as_mut() else { return false };
                m.body.extend_from_slice(&body);
                m.end_of_stream |= eos;
                dir == Dir::Response && eos
            })
            .unwrap_or(false);
        if completes {
            self.complete(id);
        }
    }

    /// Forwards whatever this side holds, bypassing the filter.
    fn pass_through(&mut self, id: StreamId, dir: Dir) {
        let Some((started, body, eos)) = self.with_stream(id, |s| {
            let d = s.dir_mut(dir);
            let started = d.phase != Phase::Idle || !d.headers.is_empty();
            d.phase = Phase::Continued;
            d.headers_available = false;
            d.body_available = false;
            let mut body = std::mem::take(&mut d.buffer);
            body.append(&mut d.held);
            (started, body, d.end_of_stream || d.held_end_of_stream)
        }) else {
            return;
        };
        if !started {
            return;
        }
        self.forward_headers(id, dir);
        if !body.is_empty() || eos {
            self.forward_body(id, dir, body, eos);
        }
    }

    fn too_large(&mut self, id: StreamId, dir: Dir) {
        let reply = |status: u32, text: &str, details: &str| LocalReply {
            status,
            body: text.as_bytes().to_vec(),
            headers: Vec::new(),
            details: details.to_string(),
            grpc_status: None,
            source: LocalReplySource::BufferLimit,
        };
        self.world().note(None, format!("stream {}: buffered {dir:?} body over the buffer limit", id.0));
        match dir {
            Dir::Request => {
                self.local_reply(id, reply(413, "Payload Too Large", "request_payload_too_large"))
            }
            Dir::Response => {
                let headers_sent = self.with_stream(id, |s| s.response.is_some()).unwrap_or(true);
                if headers_sent {
                    self.reset(id);
                } else {
                    self.with_stream(id, |s| s.sending_local_reply = false);
                    self.local_reply(id, reply(500, "Internal Server Error", "response_payload_too_large"));
                }
            }
        }
    }

    /// Envoy's `sendLocalReply`: the reply travels the response path, through this filter's response
    /// callbacks (unless the filter is what failed), and ends the stream.
    fn local_reply(&mut self, id: StreamId, reply: LocalReply) {
        enum Route {
            Ignore(&'static str),
            Reset,
            Send,
        }
        let route = self
            .with_stream(id, |s| {
                if s.completed || s.reset {
                    Route::Ignore("the stream already ended")
                } else if s.sending_local_reply {
                    Route::Ignore("a local reply is already being sent")
                } else if s.response.is_some() {
                    Route::Reset
                } else {
                    Route::Send
                }
            })
            .unwrap_or(Route::Ignore("unknown stream"));
        match route {
            Route::Ignore(why) => {
                self.world()
                    .note(None, format!("stream {}: local reply {} ignored: {why}", id.0, reply.status));
                return;
            }
            Route::Reset => {
                self.world()
                    .note(None, format!("stream {}: local reply after the response started: reset", id.0));
                self.reset(id);
                return;
            }
            Route::Send => {}
        }
        let body = reply.body.clone();
        let through_filter = reply.source != LocalReplySource::VmFailure && self.filter_of(id).is_some();
        self.with_stream(id, |s| {
            // As Envoy's local reply: the filter's headers first, then a length for a body, and
            // `text/plain` only when the filter set no content-type of its own.
            let mut headers = vec![(":status".to_string(), reply.status.to_string())];
            headers.extend(reply.headers.iter().cloned());
            if !body.is_empty() {
                headers.push(("content-length".to_string(), body.len().to_string()));
                if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type")) {
                    headers.push(("content-type".to_string(), "text/plain".to_string()));
                }
            }
            s.req.phase = Phase::Closed;
            s.req.headers_available = false;
            s.req.body_available = false;
            s.response = None;
            s.response_dir_reset(headers, body.is_empty());
            s.sending_local_reply = true;
            s.local_reply = Some(reply);
        });
        if through_filter {
            self.filter_headers(id, Dir::Response);
            if !body.is_empty() && !self.pending_ends_stream(id) {
                let ready = self
                    .with_stream(id, |s| {
                        let d = &mut s.resp;
                        match d.phase {
                            Phase::HeadersPaused { body_reaches_filter: false } => {
                                d.held = body.clone();
                                d.held_end_of_stream = true;
                                false
                            }
                            Phase::Closed | Phase::Idle => false,
                            _ => {
                                d.buffer = body.clone();
                                d.end_of_stream = true;
                                true
                            }
                        }
                    })
                    .unwrap_or(false);
                if ready {
                    self.filter_body(id, Dir::Response);
                }
            }
        } else {
            self.forward_headers(id, Dir::Response);
            if !body.is_empty() {
                self.forward_body(id, Dir::Response, body, true);
            }
        }
    }

    pub(super) fn reset(&mut self, id: StreamId) {
        let fresh = self
            .with_stream(id, |s| {
                if s.completed {
                    return false;
                }
                s.reset = true;
                s.req.phase = Phase::Closed;
                s.resp.phase = Phase::Closed;
                true
            })
            .unwrap_or(false);
        if fresh {
            self.complete(id);
        }
    }

    /// The VM behind this stream crashed (now or earlier): apply the plugin's failure policy.
    pub(super) fn stream_vm_failed(&mut self, id: StreamId) {
        let Some((vm, done)) = self.with_stream(id, |s| {
            let done = s.completed || s.reset;
            s.bypassed = true;
            (s.vm, done)
        }) else {
            return;
        };
        if done {
            return;
        }
        let policy = self.vms.get(vm.0).map(|v| v.plugin.failure_policy).unwrap_or_default();
        self.world().note(Some(vm), format!("stream {}: VM failed, applying {policy:?}", id.0));
        match policy {
            FailurePolicy::FailOpen => {
                let (req_done, resp_started) = self
                    .with_stream(id, |s| (s.req.phase == Phase::Closed, s.resp.phase != Phase::Idle))
                    .unwrap_or((true, false));
                if !req_done {
                    self.pass_through(id, Dir::Request);
                }
                if resp_started {
                    self.pass_through(id, Dir::Response);
                }
            }
            FailurePolicy::FailClosed | FailurePolicy::FailReload => {
                // A local reply already under way is replaced by the 503.
                self.with_stream(id, |s| s.sending_local_reply = false);
                let reply = LocalReply {
                    status: 503,
                    body: Vec::new(),
                    headers: Vec::new(),
                    details: "wasm_fail_stream".to_string(),
                    grpc_status: Some(14),
                    source: LocalReplySource::VmFailure,
                };
                self.local_reply(id, reply);
            }
        }
    }

    /// The stream is over: Envoy runs the access-log callback, then on_done and on_delete, and cancels
    /// the context's outstanding callouts.
    fn complete(&mut self, id: StreamId) {
        let filter = self.filter_of(id);
        let first = self
            .with_stream(id, |s| {
                if s.completed {
                    return false;
                }
                s.completed = true;
                s.sending_local_reply = false;
                true
            })
            .unwrap_or(false);
        if !first {
            return;
        }
        let Some((vm, ctx)) = filter else { return };
        {
            let mut w = self.world();
            for c in w.callouts.iter_mut() {
                if c.vm == vm && c.context_id == ctx && c.state == CalloutState::Pending {
                    c.state = CalloutState::Cancelled;
                }
            }
        }
        self.with_stream(id, |s| s.in_log_phase = true);
        let logged = self.call(vm, "proxy_on_log", ctx, &[ctx as i32]);
        self.with_stream(id, |s| s.in_log_phase = false);
        if logged != CallResult::Trapped
            && self.call(vm, "proxy_on_done", ctx, &[ctx as i32]) != CallResult::Trapped
        {
            self.call(vm, "proxy_on_delete", ctx, &[ctx as i32]);
        }
        if let Some(live) = self.vms.get_mut(vm.0).and_then(|v| v.live.as_mut()) {
            live.store.data_mut().stream_of_context.remove(&ctx);
        }
    }
}

impl HttpStream {
    fn response_dir_reset(&mut self, headers: Headers, end_of_stream: bool) {
        self.resp = super::http::Direction { headers, end_of_stream, ..Default::default() };
    }
}
