//! CPU time spent during a run, from `/proc`: the whole machine's busy time, this process's
//! (the clients and, for stockline and the baselines' handlers, the server), of that the
//! clients' threads (the runtime named `load-client`), PostgreSQL's processes',
//! `redis-server`'s, and, when the harness drives servers of their own (`--url`), the
//! `stockline` processes' and `nats-server`'s. Divided by the requests answered it gives the CPU each
//! request costs, per part, which is what decides throughput on 2 shared cores.

use std::time::Duration;

/// Clock ticks a second of `/proc`'s counters (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU time used so far, per part.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub machine: Duration,
    pub harness: Duration,
    /// The clients' share of `harness`: the threads of their own runtime.
    pub clients: Duration,
    pub postgres: Duration,
    pub redis: Duration,
    /// `stockline` processes other than this one (the nodes of a cluster).
    pub nodes: Duration,
    pub nats: Duration,
}

impl Sample {
    pub fn now() -> Self {
        let hz = ticks_per_second();
        let seconds = |ticks: u64| Duration::from_secs_f64(ticks as f64 / hz);
        let mut sample = Self {
            machine: seconds(machine_busy_ticks()),
            harness: seconds(process_ticks("self").unwrap_or(0)),
            clients: seconds(client_thread_ticks()),
            ..Self::default()
        };
        let (mut postgres, mut redis, mut nodes, mut nats) = (0, 0, 0, 0);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            match comm.trim() {
                "postgres" => postgres += process_ticks(pid).unwrap_or(0),
                "redis-server" => redis += process_ticks(pid).unwrap_or(0),
                "stockline" => nodes += process_ticks(pid).unwrap_or(0),
                "nats-server" => nats += process_ticks(pid).unwrap_or(0),
                _ => {}
            }
        }
        sample.postgres = seconds(postgres);
        sample.redis = seconds(redis);
        sample.nodes = seconds(nodes);
        sample.nats = seconds(nats);
        sample
    }

    /// What was used between `self` and `later`.
    pub fn until(&self, later: &Self) -> Self {
        Self {
            machine: later.machine.saturating_sub(self.machine),
            harness: later.harness.saturating_sub(self.harness),
            clients: later.clients.saturating_sub(self.clients),
            postgres: later.postgres.saturating_sub(self.postgres),
            redis: later.redis.saturating_sub(self.redis),
            nodes: later.nodes.saturating_sub(self.nodes),
            nats: later.nats.saturating_sub(self.nats),
        }
    }
}

/// User and system ticks of a process (`self` or a pid), children not included.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// User and system ticks of this process's threads named `load-client`.
fn client_thread_ticks() -> u64 {
    let mut ticks = 0;
    for entry in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == crate::workload::CLIENT_THREADS {
            ticks += process_ticks(&format!(
                "self/task/{}",
                entry.file_name().to_string_lossy()
            ))
            .unwrap_or(0);
        }
    }
    ticks
}

/// Busy ticks of all CPUs together (everything but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user already).
    let busy: u64 = values.iter().take(8).sum::<u64>()
        - values.get(3).copied().unwrap_or(0)
        - values.get(4).copied().unwrap_or(0);
    busy
}
