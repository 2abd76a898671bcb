//! Every log line of a test binary, captured as the JSON formatter writes
//! it, so tests can search what the host (and its guests) logged.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Captured> = OnceLock::new();

/// Starts capturing (once per test binary) with this env-filter; later
/// calls keep the first filter.
pub fn capture(filter: &str) {
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(warren::logging::env_filter(filter))
            .json()
            .with_writer(move || writer.clone())
            .init();
        logs
    });
}

/// Everything captured so far.
pub fn text() -> String {
    let logs = LOGS.get().expect("logs::capture was not called");
    String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned()
}
