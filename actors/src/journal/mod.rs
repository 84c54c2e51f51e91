//! What a change leaves behind: journal records, the [`Journal`] trait they go to, and the
//! durable-ack watermark a caller awaits in `sync` mode.
//!
//! Every record gets a log sequence number ([`Lsn`]) when it is appended. A journal
//! publishes the highest Lsn below which everything is durable; a request that must not be
//! answered before its records are safe waits on [`DurableWatch::wait_for`] with the Lsn
//! its change returned (group commit: one flush releases every waiter at once).

mod buffer;
mod memory;
mod records;
#[cfg(test)]
mod tests;
mod watermark;

pub use buffer::{Batch, FlushGroup, JournalBuffer};
pub use memory::MemoryJournal;
pub use records::*;
pub use watermark::{DurableWatch, NotDurable, Watermark};

/// Log sequence number: position of a record in the journal, starting at 1.
pub type Lsn = u64;

/// Where records go. Implementations must be cheap and non-blocking: `append` is called
/// from inside a line actor's `handle`.
pub trait Journal: Send + Sync + 'static {
    /// Appends the records as one unit, numbering them consecutively, and returns the
    /// Lsn of the last one (or the current head when `records` is empty).
    fn append(&self, records: Vec<Record>) -> Lsn;

    /// True while the backlog of records not yet durable is at its bound. Lines then refuse
    /// new work (reserve, adjust, transfer out) with `Overloaded`; work that settles what
    /// is already held (commit, release, expire, transfer in) is always taken.
    fn is_backlogged(&self) -> bool;

    /// A watch on the durable watermark, for callers that answer only once durable.
    fn durable(&self) -> DurableWatch;
}
