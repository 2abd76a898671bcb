//! The bytes behind a [`super::TraceLog`]: one buffer written round and
//! round, each hop encoded into it as one record. The message path copies
//! a hop's few hundred bytes in and allocates nothing; the oldest records
//! are overwritten, never freed one by one. (Keeping each hop's strings and
//! bodies as allocations of their own cost the embedded broker a third of
//! its throughput: frees from other threads, memory gone cold.)

use std::collections::VecDeque;

use super::{Body, Hop, Outcome, SentHop};

/// Where a record is, and its conversation's hash (to find it fast).
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    len: usize,
    conversation: u64,
}

pub(super) struct ByteRing {
    /// Reserved whole at the start, so it never moves: growing it on
    /// demand copied up to `limit` bytes under the shard's lock on the
    /// message path, and a fresh host did so every few hundred messages.
    /// The reservation is address space: its pages are touched as records
    /// arrive, so an idle host still holds little.
    buf: Vec<u8>,
    limit: usize,
    entries: VecDeque<Entry>,
    /// Where the next record goes.
    write: usize,
    /// Records kept at most.
    capacity: usize,
}

impl ByteRing {
    pub(super) fn new(limit: usize, capacity: usize) -> Self {
        ByteRing {
            buf: Vec::with_capacity(limit),
            limit,
            entries: VecDeque::with_capacity(capacity.min(1 << 16)),
            write: 0,
            capacity,
        }
    }

    /// Stores one record, overwriting the oldest ones it needs room from.
    pub(super) fn push(&mut self, conversation: u64, record: &[u8]) {
        let n = record.len();
        if n == 0 || n > self.limit || self.capacity == 0 {
            return;
        }
        if self.write + n > self.limit {
            // Wrap: what is left of the previous lap past the write point
            // is the oldest; it goes first.
            let old = self.write;
            while self.entries.front().is_some_and(|e| e.start >= old) {
                self.entries.pop_front();
            }
            self.write = 0;
        }
        let at = self.write;
        while let Some(e) = self.entries.front() {
            let overlaps = e.start < at + n && at < e.start + e.len;
            if overlaps || self.entries.len() >= self.capacity {
                self.entries.pop_front();
            } else {
                break;
            }
        }
        if self.buf.len() < at + n {
            self.buf.resize(at + n, 0);
        }
        self.buf[at..at + n].copy_from_slice(record);
        self.entries.push_back(Entry {
            start: at,
            len: n,
            conversation,
        });
        self.write = at + n;
    }

    /// The records of a conversation (by hash), oldest first.
    pub(super) fn find(&self, conversation: u64) -> impl Iterator<Item = &[u8]> {
        self.entries
            .iter()
            .filter(move |e| e.conversation == conversation)
            .map(|e| &self.buf[e.start..e.start + e.len])
    }

    /// Every record, newest first.
    pub(super) fn newest_first(&self) -> impl Iterator<Item = &[u8]> {
        self.entries
            .iter()
            .rev()
            .map(|e| &self.buf[e.start..e.start + e.len])
    }
}

/// A record's bytes: length-prefixed fields, little-endian.
pub(super) struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    pub fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(s) => {
                self.u8(1);
                self.bytes(s.as_bytes());
            }
            None => self.u8(0),
        }
    }
    pub fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(x) => {
                self.u8(1);
                self.u64(x);
            }
            None => self.u8(0),
        }
    }
    pub fn opt_f64(&mut self, v: Option<f64>) {
        self.opt_u64(v.map(f64::to_bits));
    }
    /// A destination as its tag (`agent:NAME`, `queue:NAME`), unallocated.
    pub fn route(&mut self, route: &crate::broker::Route) {
        let (kind, name) = match route {
            crate::broker::Route::Agent(a) => ("agent:", a),
            crate::broker::Route::Queue(q) => ("queue:", q),
        };
        self.u32((kind.len() + name.len()) as u32);
        self.0.extend_from_slice(kind.as_bytes());
        self.0.extend_from_slice(name.as_bytes());
    }
    /// A body: kept whole, or (larger than kept) masked and cut.
    pub fn body(&mut self, raw: &[u8]) {
        self.u64(raw.len() as u64);
        if raw.len() <= super::KEPT_BODY_BYTES {
            self.u8(0);
            self.bytes(raw);
        } else {
            // Masked now: a cut body is no longer JSON, and its secrets
            // could not be found in it later.
            let masked = super::mask::body(&String::from_utf8_lossy(raw), None);
            self.u8(1);
            self.bytes(crate::broker::bounded(&masked, super::KEPT_BODY_BYTES).as_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_bits(self.u64()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        Some(String::from_utf8_lossy(self.bytes()?).into_owned())
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(self.string()?)),
        }
    }
    fn opt_u64(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(self.u64()?)),
        }
    }
    fn body(&mut self) -> Option<Body> {
        let bytes = self.u64()? as usize;
        let cut = self.u8()? != 0;
        Some(Body {
            text: self.string()?,
            bytes,
            cut,
        })
    }
}

/// Outcome kinds in a record.
const HANDLED: u8 = 0;
const RETRIED: u8 = 1;
const DEAD_LETTERED: u8 = 2;
const REQUEUED: u8 = 3;
const SETTLE_FAILED: u8 = 4;

pub(super) fn write_outcome(w: &mut Writer<'_>, outcome: &Outcome) {
    let (kind, delay, reason) = match outcome {
        Outcome::Handled => (HANDLED, 0, ""),
        Outcome::Retried { delay_ms, reason } => (RETRIED, *delay_ms, reason.as_str()),
        Outcome::DeadLettered { reason } => (DEAD_LETTERED, 0, reason.as_str()),
        Outcome::Requeued { reason } => (REQUEUED, 0, reason.as_str()),
        Outcome::SettleFailed { reason } => (SETTLE_FAILED, 0, reason.as_str()),
    };
    w.u8(kind);
    w.u64(delay);
    w.bytes(reason.as_bytes());
}

/// The hop a record holds (`host` is the ring's).
pub(super) fn read_hop(record: &[u8], host: &str) -> Option<Hop> {
    let mut r = Reader(record);
    let conversation_id = r.string()?;
    let id = r.string()?;
    let agent = r.string()?;
    let version = r.opt_string()?;
    let sender = r.opt_string()?;
    let attempt = r.u32()?;
    let hops = r.u32()?;
    let received_at_ms = r.u64()?;
    let waited_ms = r.opt_u64()?;
    let guest_ms = r.opt_u64()?.map(f64::from_bits);
    let total_ms = r.f64()?;
    let kind = r.u8()?;
    let delay_ms = r.u64()?;
    let reason = r.string()?;
    let outcome = match kind {
        HANDLED => Outcome::Handled,
        RETRIED => Outcome::Retried { delay_ms, reason },
        DEAD_LETTERED => Outcome::DeadLettered { reason },
        REQUEUED => Outcome::Requeued { reason },
        _ => Outcome::SettleFailed { reason },
    };
    let received = r.body()?;
    let n = r.u32()? as usize;
    let mut sent = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        sent.push(SentHop {
            id: r.string()?,
            to: r.string()?,
            body: r.body()?,
        });
    }
    Some(Hop {
        host: host.to_string(),
        conversation_id,
        id,
        agent,
        version,
        attempt,
        hops,
        sender,
        received_at_ms,
        waited_ms,
        guest_ms,
        total_ms,
        outcome,
        received,
        sent,
    })
}

/// What the list of recent conversations and guest times need of a
/// record, read without its bodies.
pub(super) struct Summary {
    pub conversation_id: String,
    pub agent: String,
    pub received_at_ms: u64,
    pub guest_ms: Option<f64>,
    pub kind: u8,
}

pub(super) fn read_summary(record: &[u8]) -> Option<Summary> {
    let mut r = Reader(record);
    let conversation_id = r.string()?;
    r.bytes()?;
    let agent = r.string()?;
    r.opt_string()?;
    r.opt_string()?;
    r.u32()?;
    r.u32()?;
    let received_at_ms = r.u64()?;
    r.opt_u64()?;
    let guest_ms = r.opt_u64()?.map(f64::from_bits);
    r.f64()?;
    let kind = r.u8()?;
    Some(Summary {
        conversation_id,
        agent,
        received_at_ms,
        guest_ms,
        kind,
    })
}

/// An outcome kind's label (as [`Outcome::label`]).
pub(super) fn kind_label(kind: u8) -> &'static str {
    match kind {
        HANDLED => "handled",
        RETRIED => "retried",
        DEAD_LETTERED => "dead-lettered",
        REQUEUED => "requeued",
        _ => "settle failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_overwrites_the_oldest_records_and_keeps_order() {
        let mut ring = ByteRing::new(100, 1000);
        for i in 0..50u8 {
            ring.push(u64::from(i % 3), &[i; 30]);
        }
        // 100 bytes hold three records of 30: the latest three.
        let kept: Vec<u8> = ring.newest_first().map(|r| r[0]).collect();
        assert_eq!(kept, [49, 48, 47]);
        let of_one: Vec<u8> = ring.find(1).map(|r| r[0]).collect();
        assert_eq!(of_one, [49]);
        let mut ring = ByteRing::new(1000, 2);
        for i in 0..5u8 {
            ring.push(0, &[i; 10]);
        }
        let kept: Vec<u8> = ring.newest_first().map(|r| r[0]).collect();
        assert_eq!(kept, [4, 3], "at most `capacity` records");
    }

    #[test]
    fn records_of_varied_sizes_never_overlap() {
        let mut ring = ByteRing::new(1000, 10_000);
        for i in 0..2000usize {
            let len = 1 + (i * 37) % 190;
            ring.push(i as u64, &vec![(i % 251) as u8; len]);
            for (k, r) in ring.newest_first().enumerate() {
                let j = i - k;
                assert_eq!(r.len(), 1 + (j * 37) % 190, "record {j} intact");
                assert!(r.iter().all(|b| *b == (j % 251) as u8), "record {j} intact");
            }
        }
    }
}
