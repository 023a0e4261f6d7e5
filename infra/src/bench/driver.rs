//! Runs N concurrent workers for a fixed time and measures operations/s and
//! per-operation latency.

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
}
