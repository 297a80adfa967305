// Picks the pod for one inference request through epp-shim's plain-HTTP pick endpoint (nginx.conf).
// The same shape as NGINX Gateway Fabric's njs module: the client's headers and body go to a local
// HTTP endpoint, the answer names the pod in `x-gateway-destination-endpoint`, and an internal redirect
// proxies there. Beyond it: the shim's local replies (400/413/429/503, OpenAI JSON) reach the client as
// they are, a rewritten body is sent in place of the client's, a ticket lets NGINX report the end of
// the response (in-flight accounting), and the failure mode is followed here when the shim is down.

// Hop-by-hop and framing headers: ngx.fetch sets its own.
const SKIP = ['host', 'connection', 'content-length', 'transfer-encoding', 'keep-alive', 'expect',
    'upgrade', 'te', 'proxy-connection'];

function unavailable(r) {
    if (r.variables.epp_failure_mode === 'FailOpen') {
        r.internalRedirect('@epp_pool');
        return;
    }
    r.headersOut['Content-Type'] = 'application/json';
    r.return(503, JSON.stringify({error: {
        message: 'the endpoint picker is unavailable', type: 'service_unavailable_error',
        param: null, code: 'picker_unavailable'}}));
}

async function pick(r) {
    const headers = {};
    for (const name in r.headersIn) {
        const lower = name.toLowerCase();
        // x-epp-*: the pick protocol's own headers, never the client's.
        if (!SKIP.includes(lower) && !lower.startsWith('x-epp-')) {
            headers[name] = r.headersIn[name];
        }
    }
    headers['x-epp-path'] = r.variables.request_uri;
    let reply;
    try {
        reply = await ngx.fetch(r.variables.epp_pick_url, {
            method: 'POST', headers: headers, body: r.requestText || ''});
    } catch (e) {
        r.warn(`epp: cannot ask the endpoint picker: ${e}`);
        unavailable(r);
        return;
    }
    if (reply.headers.get('x-epp-local-reply')) {
        const body = await reply.text();
        r.headersOut['Content-Type'] = 'application/json';
        r.return(reply.status, body);
        return;
    }
    if (reply.status !== 200) {
        r.warn(`epp: the endpoint picker answered ${reply.status}: ${await reply.text()}`);
        unavailable(r);
        return;
    }
    r.variables.epp_request_id = reply.headers.get('x-request-id') || '';
    const endpoint = reply.headers.get('x-gateway-destination-endpoint');
    if (!endpoint) {
        // The picker fails open without a choice (failureMode FailOpen, no usable metrics).
        r.internalRedirect('@epp_pool');
        return;
    }
    r.variables.epp_endpoint = endpoint;
    r.variables.epp_pick = reply.headers.get('x-epp-pick') || '';
    r.variables.epp_prefill = reply.headers.get('x-prefiller-host-port') || '';
    if (reply.headers.get('x-epp-body') === 'rewritten') {
        r.variables.epp_body = await reply.text();
        r.internalRedirect('@epp_route_rewritten');
        return;
    }
    r.internalRedirect('@epp_route');
}

export default {pick};
