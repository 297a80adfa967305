// Cargo test runner for wasm32-wasip1: runs a test binary under Node's WASI preview 1, so the no_std
// core's own test suite executes as Wasm, the way the proxy will run it. Usage: node run.mjs file.wasm [args]
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import process from "node:process";

const [file, ...args] = process.argv.slice(2);
if (!file) {
  console.error("usage: node run.mjs <file.wasm> [args...]");
  process.exit(2);
}
// No preopened directories for tests: the core does no I/O, and tests must not depend on the file system.
// Benchmarks (`cargo xtask bench core-wasm`) get one directory, for Criterion's reports.
const criterionDir = process.env.WASI_CRITERION_DIR;
const wasi = new WASI({
  version: "preview1",
  args: [file, ...args],
  env: criterionDir ? { RUST_BACKTRACE: "0", CRITERION_HOME: "/criterion" } : { RUST_BACKTRACE: "0" },
  preopens: criterionDir ? { "/criterion": criterionDir } : {},
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
const code = wasi.start(instance);
process.exit(code ?? 0);
