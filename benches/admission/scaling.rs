//! One thread against two, measured so that a noisy machine disturbs it least: short rounds,
//! the contenders interleaved round by round, and the best round of each reported (the one the
//! other tenants of the machine disturbed least) beside the median.

use std::time::Duration;

use crate::pool::{Job, Pool};

/// A contender: its name and its job for one and for two threads.
pub struct Contender {
    pub name: String,
    pub one: Job,
    pub two: Job,
}

const ROUNDS: usize = 15;
const ROUND: Duration = Duration::from_millis(40);

/// Decisions per second of `threads` workers running `job` for about one round.
fn round(job: &Job, threads: usize, iters: u64) -> f64 {
    let mut pool = Pool::new(threads, job.clone());
    let took = pool.run(iters);
    (threads as u64 * iters) as f64 / took.as_secs_f64()
}

fn iterations(job: &Job) -> u64 {
    let mut pool = Pool::new(1, job.clone());
    let probe = 20_000;
    let took = pool.run(probe).as_secs_f64().max(1e-6);
    ((ROUND.as_secs_f64() / took) * probe as f64).max(1_000.0) as u64
}

fn summary(mut rates: Vec<f64>) -> (f64, f64) {
    rates.sort_by(f64::total_cmp);
    let best = rates.last().copied().unwrap_or(0.0);
    (best, rates.get(rates.len() / 2).copied().unwrap_or(0.0))
}

/// Runs every contender at one and two threads, `ROUNDS` times interleaved; prints millions of
/// decisions per second (best, median) and the two-thread speed-up of the best rounds.
pub fn compare(title: &str, contenders: &[Contender]) -> Vec<(String, f64, f64)> {
    let iters: Vec<u64> = contenders.iter().map(|c| iterations(&c.one)).collect();
    let mut seen: Vec<[Vec<f64>; 2]> = contenders.iter().map(|_| [vec![], vec![]]).collect();
    for _ in 0..ROUNDS {
        for (i, c) in contenders.iter().enumerate() {
            seen[i][0].push(round(&c.one, 1, iters[i]));
            seen[i][1].push(round(&c.two, 2, iters[i]));
        }
    }
    println!("{title}: M decisions/s, best (median) of {ROUNDS} interleaved rounds of ~40 ms");
    let mut out = vec![];
    for (c, [one, two]) in contenders.iter().zip(seen) {
        let ((b1, m1), (b2, m2)) = (summary(one), summary(two));
        println!(
            "  {:<28} 1 thread {:>6.2} ({:>6.2})   2 threads {:>6.2} ({:>6.2})   x{:.2}",
            c.name,
            b1 / 1e6,
            m1 / 1e6,
            b2 / 1e6,
            m2 / 1e6,
            b2 / b1
        );
        out.push((c.name.clone(), b1, b2));
    }
    out
}
