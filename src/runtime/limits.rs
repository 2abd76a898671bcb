//! Per-instance resource limits, with the peak kept for accounting.
//!
//! A guest that asks for more linear memory (or table space) than allowed
//! traps with [`LimitExceeded`] — a named error instead of an allocation
//! failure deep inside the guest — so dispatch can say "memory limit hit".

use std::fmt;

/// What a guest tried to exceed.
#[derive(Debug, Clone)]
pub struct LimitExceeded {
    pub what: &'static str,
    pub requested: usize,
    pub limit: usize,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the guest asked for {} {} (limit {})",
            self.requested, self.what, self.limit
        )
    }
}

impl std::error::Error for LimitExceeded {}

/// The limiter a store runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_memory: usize,
    pub max_table_elements: usize,
    /// The largest linear memory this instance has had, in bytes.
    pub peak_memory: usize,
}

impl Limits {
    pub fn new(max_memory: usize, max_table_elements: usize) -> Self {
        Limits {
            max_memory,
            max_table_elements,
            peak_memory: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            return Err(wasmtime::Error::from_anyhow(anyhow::Error::new(
                LimitExceeded {
                    what: "bytes of linear memory",
                    requested: desired,
                    limit: self.max_memory,
                },
            )));
        }
        self.peak_memory = self.peak_memory.max(desired).max(current);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            return Err(wasmtime::Error::from_anyhow(anyhow::Error::new(
                LimitExceeded {
                    what: "table elements",
                    requested: desired,
                    limit: self.max_table_elements,
                },
            )));
        }
        Ok(true)
    }
}
