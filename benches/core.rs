//! Criterion benches of the in-memory core: reserve+release round trips through the line
//! actors, on one hot line under many concurrent callers and spread over 10,000 lines.
//!
//! Each iteration is one round trip = two messages (reserve, then release), so the
//! reported element rate is messages per second. Run: `cargo bench --bench core`.
//!
//! Three designs run side by side on the same workload, so their ratio is what to read on a
//! noisy 2-core machine: `ractor` (the core as shipped: no timer per call), `ractor_timeout`
//! (the same with a 5 s timeout on every call), and `tokio_mpsc` (the same `LineState`
//! rules and journal behind a bare tokio channel and task: what ractor's plumbing costs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stockline_actors::line_state::LineState;
use stockline_actors::{
    Applied, Core, CoreConfig, EmptyStore, Journal, Limits, LineHandle, LineKey, LineOp,
    MemoryJournal, Quantity, Record, ReservationId, WarehouseInfo,
};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

/// Concurrent callers driving the lines.
const CALLERS: usize = 64;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A core with `lines` lines (one warehouse, products 0..lines), each stocked deep enough
/// that every reserve succeeds.
async fn stocked_core(lines: usize, limits: Limits) -> (Core, Vec<LineHandle>) {
    let journal = Arc::new(MemoryJournal::discarding());
    let config = CoreConfig {
        limits,
        ..CoreConfig::default()
    };
    let core = Core::start(config, journal, Arc::new(EmptyStore))
        .await
        .expect("core");
    core.upsert_warehouse(1, WarehouseInfo::default())
        .await
        .expect("warehouse");
    let mut handles = Vec::with_capacity(lines);
    for product in 0..lines as i64 {
        let key = LineKey::new(1, product);
        core.adjust(key, 1_000_000_000, "receipt".into(), None)
            .await
            .expect("stock");
        handles.push(core.registry().resident(key).expect("line"));
    }
    (core, handles)
}

/// The two ways to reach a line that the benches compare.
trait Line: Send + Sync + 'static {
    fn call(&self, op: LineOp) -> impl std::future::Future<Output = Applied> + Send;
}

impl Line for LineHandle {
    async fn call(&self, op: LineOp) -> Applied {
        let bounded = op.is_new_work();
        let applied = if bounded {
            LineHandle::call(self, op).await
        } else {
            self.settle(op).await
        };
        applied.expect("line answers")
    }
}

/// The baseline: the same rules and journal behind a bare tokio channel and task.
struct MpscLine(mpsc::UnboundedSender<(LineOp, oneshot::Sender<Applied>)>);

impl MpscLine {
    fn spawn(key: LineKey, journal: Arc<dyn Journal>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(LineOp, oneshot::Sender<Applied>)>();
        let mut state = LineState::empty(key, true);
        state.on_hand = 1_000_000_000;
        tokio::spawn(async move {
            while let Some((op, reply)) = rx.recv().await {
                let change = state
                    .apply(op, chrono::Utc::now())
                    .expect("accepted")
                    .expect("change");
                let movement = state.movement(change);
                let lsn = journal.append(vec![
                    Record::Line(state.record()),
                    Record::Movement(movement),
                ]);
                let _ = reply.send(Applied {
                    snapshot: state.snapshot(),
                    lsn,
                });
            }
        });
        Self(tx)
    }
}

impl Line for MpscLine {
    async fn call(&self, op: LineOp) -> Applied {
        let (tx, rx) = oneshot::channel();
        self.0.send((op, tx)).expect("line alive");
        rx.await.expect("line answers")
    }
}

/// Runs `iters` reserve+release round trips split over `CALLERS` tasks; caller `c` uses
/// lines `c, c + CALLERS, ...` modulo the number of lines.
async fn round_trips<L: Line>(lines: &Arc<Vec<L>>, iters: u64) -> Duration {
    let per_caller = iters.div_ceil(CALLERS as u64);
    let qty = Quantity::new(1).expect("qty");
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let lines = lines.clone();
            tokio::spawn(async move {
                for i in 0..per_caller as usize {
                    let line = &lines[(caller + i * CALLERS) % lines.len()];
                    let id = ReservationId::new();
                    line.call(LineOp::Reserve { id, qty }).await;
                    line.call(LineOp::Release { id }).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
    start.elapsed()
}

fn bench_lines<L: Line>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    design: &str,
    lines: Vec<L>,
) {
    let count = lines.len();
    let lines = Arc::new(lines);
    group.throughput(Throughput::Elements(2)); // two messages per round trip
    group.bench_with_input(BenchmarkId::new(design, count), &count, |b, _| {
        b.to_async(rt).iter_custom(|iters| {
            let lines = lines.clone();
            async move { round_trips(&lines, iters).await }
        });
    });
}

fn reserve_release(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("reserve_release");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));
    let with_timer = Limits {
        call_timeout: Some(Duration::from_secs(5)),
        ..Limits::default()
    };
    for lines in [1usize, 10_000] {
        for (design, limits) in [
            ("ractor", Limits::default()),
            ("ractor_timeout", with_timer),
        ] {
            let (core, handles) = rt.block_on(stocked_core(lines, limits));
            bench_lines(&mut group, &rt, design, handles);
            rt.block_on(core.shutdown());
        }
        let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::discarding());
        let mpsc_lines = rt.block_on(async {
            (0..lines as i64)
                .map(|p| MpscLine::spawn(LineKey::new(1, p), journal.clone()))
                .collect::<Vec<_>>()
        });
        bench_lines(&mut group, &rt, "tokio_mpsc", mpsc_lines);
    }
    group.finish();
}

criterion_group!(benches, reserve_release);
criterion_main!(benches);
