//! Runs N concurrent workers for a fixed time and measures operations/s and
//! per-operation latency: each as fast as it can (closed loop), or at a
//! fixed rate shared between them (open loop).

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::BenchError;

/// One concurrent writer; each `step` is one measured operation.
#[async_trait]
pub(crate) trait Worker: Send + 'static {
    async fn step(&mut self) -> Result<(), String>;
}

/// What one run measured.
pub(crate) struct Measured {
    pub per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// The run with the median throughput (of an even count, the upper of the
/// two middle ones). `runs` must not be empty.
pub(crate) fn median(mut runs: Vec<Measured>) -> Measured {
    runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    runs.swap_remove(runs.len() / 2)
}

/// A note listing every run of a row measured several times, in the order
/// they ran.
pub(crate) fn runs_note(writers: usize, engine: &[Measured], baseline: &[Measured]) -> String {
    let list = |runs: &[Measured]| runs.iter().map(|r| format!("{:.0}", r.per_second)).collect::<Vec<_>>().join(" · ");
    format!(
        "{writers} writers, {} runs each, engine and baseline alternating (the row shows each side's median run): \
         engine {}; baseline {}",
        engine.len(),
        list(engine),
        list(baseline)
    )
}

/// Runs `workers` for `duration` and counts the steps they complete.
pub(crate) async fn drive(workers: Vec<Box<dyn Worker>>, duration: Duration) -> Result<Measured, BenchError> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    worker.step().await?;
                    latencies.push(begun.elapsed().as_micros() as u64);
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    gather(tasks, started).await
}

/// Waits for the workers' latencies and sums them up.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<u64>, String>>>,
    started: Instant,
) -> Result<Measured, BenchError> {
    let mut all = Vec::new();
    for task in tasks {
        let latencies = task.await.map_err(|e| BenchError::Operation(e.to_string()))?.map_err(BenchError::Operation)?;
        all.extend(latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let percentile = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied();
    Ok(Measured {
        per_second: all.len() as f64 / elapsed,
        p50_us: percentile(0.50).unwrap_or(0),
        p99_us: percentile(0.99).unwrap_or(0),
    })
}

/// When one of several clients that share a fixed rate starts its
/// operations (open loop): every `clients / rate` seconds, the clients'
/// starts spread evenly over that interval, whether or not the last
/// operation has finished.
pub(crate) struct Schedule {
    next: Instant,
    interval: Duration,
}

impl Schedule {
    /// Client `client` of `clients` sharing `rate` operations/s from `start`.
    pub(crate) fn new(start: Instant, rate: f64, clients: usize, client: usize) -> Schedule {
        let interval = Duration::from_secs_f64(clients.max(1) as f64 / rate);
        let offset = interval.mul_f64(client as f64 / clients.max(1) as f64);
        Schedule { next: start + offset, interval }
    }

    /// The moment the next operation is due.
    pub(crate) fn take(&mut self) -> Instant {
        let due = self.next;
        self.next += self.interval;
        due
    }
}

/// Runs `workers` for `duration` as clients sharing `rate` operations/s
/// (see [`Schedule`]). An operation that waits for its client's previous
/// one to finish counts that wait too: its latency runs from when it was due.
pub(crate) async fn drive_at_rate(
    workers: Vec<Box<dyn Worker>>,
    duration: Duration,
    rate: f64,
) -> Result<Measured, BenchError> {
    let started = Instant::now();
    let deadline = started + duration;
    let clients = workers.len();
    let tasks: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(client, mut worker)| {
            let mut schedule = Schedule::new(started, rate, clients, client);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                loop {
                    let due = schedule.take();
                    if due >= deadline {
                        break;
                    }
                    // Behind schedule, the page has waited since it was due.
                    // Otherwise the timer wakes up to a millisecond late: that
                    // is the client's lateness, not the server's, so the
                    // clock starts at the wake-up.
                    let began = if Instant::now() >= due {
                        due
                    } else {
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now()
                    };
                    worker.step().await?;
                    latencies.push(began.elapsed().as_micros() as u64);
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    gather(tasks, started).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(per_second: f64) -> Measured {
        Measured { per_second, p50_us: per_second as u64, p99_us: 0 }
    }

    #[test]
    fn the_median_run_is_the_middle_one_by_throughput() {
        let picked = median(vec![run(30.0), run(10.0), run(20.0)]);
        assert_eq!((picked.per_second, picked.p50_us), (20.0, 20), "its latencies come with it");
        assert_eq!(median(vec![run(40.0), run(10.0), run(30.0), run(20.0)]).per_second, 30.0);
        assert_eq!(median(vec![run(7.0)]).per_second, 7.0);
    }

    #[test]
    fn clients_sharing_a_rate_start_evenly_spread_over_each_interval() {
        let start = Instant::now();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // 1,000 operations/s over 4 clients: each every 4 ms, 1 ms apart.
        let mut first = Schedule::new(start, 1000.0, 4, 0);
        let mut third = Schedule::new(start, 1000.0, 4, 2);
        let firsts: Vec<f64> = (0..3).map(|_| ms(first.take() - start)).collect();
        let thirds: Vec<f64> = (0..3).map(|_| ms(third.take() - start)).collect();
        for (got, want) in firsts.iter().zip([0.0, 4.0, 8.0]).chain(thirds.iter().zip([2.0, 6.0, 10.0])) {
            assert!((got - want).abs() < 1e-6, "due at {got} ms, expected {want} ms");
        }
    }
}
