//! The Proxy-Wasm glue: only what depends on the proxy's state machine. Compiled for `wasm32` only, so the
//! logic modules build and test natively.

mod abi;
mod bbr;
mod headers;
mod host_impl;
mod logger;
mod root;
mod stream;
mod waiting;

proxy_wasm::main! {{
    logger::install();
    proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::new(id)) });
}}
