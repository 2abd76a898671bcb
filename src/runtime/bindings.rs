//! Host bindings generated from `wit/agent.wit` — the contract.

wasmtime::component::bindgen!({
    world: "agent",
    path: "wit",
    // Exports are called with `call_async` so a guest runs on a fiber and
    // never blocks a tokio worker; `log` is a plain synchronous import.
    exports: { default: async },
});

pub use self::warren::agent::host::Level;
// The world `use`s message, outgoing and failure, so bindgen puts them at the top.
pub use self::warren::agent::types::{ChatMessage, Destination};

/// The fully-qualified name of the world, for error messages.
pub const WORLD: &str = "warren:agent/agent@0.1.0";
