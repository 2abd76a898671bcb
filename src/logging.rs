//! Log filtering that keeps message bodies out of every log line.
//!
//! lapin logs a returned (unroutable) message with its whole body at WARN,
//! and every frame at TRACE. Those targets are capped here whatever filter
//! the operator asks for; warren logs returns itself, with id and reason.

use tracing_subscriber::EnvFilter;

/// Directives added after the operator's: the more specific target wins.
pub const NO_BODIES: [&str; 4] = [
    "lapin::returned_messages=error",
    "lapin::channels=debug",
    "lapin::frames=debug",
    "amq_protocol=debug",
];

/// `spec` (tracing's env-filter syntax) with [`NO_BODIES`] added.
pub fn env_filter(spec: &str) -> EnvFilter {
    let mut filter = EnvFilter::new(spec);
    for cap in NO_BODIES {
        filter = filter.add_directive(cap.parse().expect("a valid directive"));
    }
    filter
}
