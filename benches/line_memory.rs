//! Memory per idle stock line: spawns 100,000 lines and reports the heap bytes they hold
//! (counted by a wrapping global allocator, exact and repeatable) and the growth of the
//! process's resident set (what the OS sees, including allocator slack).
//!
//! Lines are measured active (each with its ractor actor) and passivated (idle past
//! `passivate_after`: the actor given up, the state kept). For comparison, in the same run:
//! 100,000 bare ractor actors with an empty state (what ractor itself costs per actor), and
//! 100,000 bare tokio tasks parked on a channel (the floor for one task per line).
//! Run: `cargo bench --bench line_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::time::Duration;

use stockline_actors::{
    Core, CoreConfig, EmptyStore, Limits, LineKey, MemoryJournal, WarehouseInfo,
};

const LINES: usize = 100_000;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_bytes() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Runs `spawn`, then reports heap and RSS growth per item while what it built is alive.
async fn measure<T>(name: &str, spawn: impl AsyncFnOnce() -> T) -> T {
    let (heap, rss) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    let alive = spawn().await;
    // Let every spawned task reach its idle wait before reading.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let heap = LIVE.load(Ordering::Relaxed) - heap;
    let rss = rss_bytes() - rss;
    println!(
        "{name:<28} heap {:>6} B/line   rss {:>6} B/line   ({} lines, heap {:.1} MiB)",
        heap / LINES as isize,
        rss / LINES as isize,
        LINES,
        heap as f64 / (1 << 20) as f64
    );
    alive
}

struct Bare;

impl Actor for Bare {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

async fn core(passivate_after: Option<Duration>) -> Core {
    let limits = Limits {
        passivate_after,
        ..Limits::default()
    };
    let config = CoreConfig {
        limits,
        ..CoreConfig::default()
    };
    let journal = Arc::new(MemoryJournal::discarding());
    let core = Core::start(config, journal, Arc::new(EmptyStore))
        .await
        .expect("core");
    core.upsert_warehouse(1, WarehouseInfo::default())
        .await
        .expect("warehouse");
    core
}

async fn spawn_lines(core: &Core) {
    for product in 0..LINES as i64 {
        core.registry()
            .line(LineKey::new(1, product))
            .await
            .expect("line");
    }
    assert_eq!(core.registry().len(), LINES);
}

/// Each scenario runs in a fresh child process of this bench, so freed memory and exiting
/// tasks of one cannot blur the figures of the next.
fn main() {
    match std::env::var("LINE_MEMORY_SCENARIO") {
        Ok(scenario) => run(&scenario),
        Err(_) => {
            for scenario in ["tokio", "ractor", "active", "passivated"] {
                let status = std::process::Command::new(std::env::current_exe().expect("exe"))
                    .env("LINE_MEMORY_SCENARIO", scenario)
                    .status()
                    .expect("child");
                assert!(status.success(), "scenario {scenario} failed");
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn run(scenario: &str) {
    match scenario {
        "tokio" => {
            let _alive = measure("tokio task + channel", async || {
                (0..LINES)
                    .map(|_| {
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                        tokio::spawn(async move { while rx.recv().await.is_some() {} });
                        tx
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        }
        "ractor" => {
            let _alive = measure("bare ractor actor", async || {
                let mut refs = Vec::with_capacity(LINES);
                for _ in 0..LINES {
                    refs.push(Actor::spawn(None, Bare, ()).await.expect("spawn").0);
                }
                refs
            })
            .await;
        }
        "active" => {
            let core = core(None).await;
            measure("stockline line (active)", async || spawn_lines(&core).await).await;
            core.shutdown().await;
        }
        _ => {
            let core = core(Some(Duration::from_millis(200))).await;
            measure("stockline line (passivated)", async || {
                spawn_lines(&core).await;
                while core.registry().active_lines() > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Drained actors stop (and free their task) just after being unpublished.
                tokio::time::sleep(Duration::from_secs(1)).await;
            })
            .await;
            core.shutdown().await;
        }
    }
}
