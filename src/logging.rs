//! Log filtering that keeps message bodies out of every log line.
//!
//! lapin logs a returned (unroutable) message with its whole body at WARN,
//! and every frame at TRACE. Those targets are capped here whatever filter
//! the operator asks for; warren logs returns itself, with id and reason.

use tracing_subscriber::EnvFilter;

/// lapin's log of returned messages: off whatever the filter says.
pub const NO_RETURNED_BODIES: &str = "lapin::returned_messages=off";

/// Caps for a filter that enables TRACE somewhere: the targets that log
/// frames, at DEBUG at most. (Added only then: a directive also raises a
/// target the filter had lower.)
pub const NO_FRAMES: [&str; 3] = [
    "lapin::channels=debug",
    "lapin::frames=debug",
    "amq_protocol=debug",
];

/// `spec` (tracing's env-filter syntax) with the caps above added.
pub fn env_filter(spec: &str) -> EnvFilter {
    let mut filter =
        EnvFilter::new(spec).add_directive(NO_RETURNED_BODIES.parse().expect("a valid directive"));
    if spec.to_ascii_lowercase().contains("trace") {
        for cap in NO_FRAMES {
            filter = filter.add_directive(cap.parse().expect("a valid directive"));
        }
    }
    filter
}
