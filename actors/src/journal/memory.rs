//! A journal that keeps records in memory.

use std::sync::{Arc, Mutex};

use crate::types::{LineKey, lock};

use super::{DurableWatch, Journal, Lsn, MovementRecord, Record, Watermark};

/// A journal that keeps every record in memory and counts it durable at once: for tests,
/// benches, and a server run without persistence.
pub struct MemoryJournal {
    records: Mutex<Kept>,
    keep: bool,
    durable: Arc<Watermark>,
}

#[derive(Default)]
struct Kept {
    records: Vec<(Lsn, Record)>,
    head: Lsn,
}

impl MemoryJournal {
    /// Keeps every record, so tests can read them back.
    pub fn new() -> Self {
        Self::with_keep(true)
    }

    /// Numbers records but drops them: for benches that would otherwise grow without end.
    pub fn discarding() -> Self {
        Self::with_keep(false)
    }

    fn with_keep(keep: bool) -> Self {
        Self {
            records: Mutex::new(Kept::default()),
            keep,
            durable: Watermark::starting_at(0),
        }
    }

    /// Every record kept so far, in Lsn order.
    pub fn records(&self) -> Vec<(Lsn, Record)> {
        lock(&self.records).records.clone()
    }

    /// The movements of one line, oldest first.
    pub fn movements(&self, key: LineKey) -> Vec<MovementRecord> {
        lock(&self.records)
            .records
            .iter()
            .filter_map(|(_, r)| match r {
                Record::Movement(m) if m.key == key => Some(m.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Default for MemoryJournal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal for MemoryJournal {
    fn append(&self, records: Vec<Record>) -> Lsn {
        let mut kept = lock(&self.records);
        let first = kept.head + 1;
        kept.head += records.len() as Lsn;
        let head = kept.head;
        if self.keep {
            kept.records.extend((first..).zip(records));
        }
        self.durable.advance(head);
        head
    }

    fn is_backlogged(&self) -> bool {
        false
    }

    fn durable(&self) -> DurableWatch {
        DurableWatch(self.durable.clone())
    }
}

impl Drop for MemoryJournal {
    fn drop(&mut self) {
        self.durable.close();
    }
}
