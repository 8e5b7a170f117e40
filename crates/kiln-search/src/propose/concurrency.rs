//! Running one search step's proposal requests at the same time, with a bound.

use super::error::ProposeError;
use super::request::{ProposalBatch, ProposalRequest};
use super::Proposer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs `reqs` on `proposer` with at most `max_in_flight` at once (0 counts as 1) and
/// returns the results in the order of `reqs`.
///
/// Each request runs on a scoped thread, so the proposer is borrowed, not cloned; LLM calls
/// spend their time waiting on the network, so threads (not a pool sized to the CPU) fit.
pub fn propose_many(
    proposer: &dyn Proposer,
    reqs: Vec<ProposalRequest>,
    max_in_flight: usize,
) -> Vec<Result<ProposalBatch, ProposeError>> {
    let n = reqs.len();
    let workers = max_in_flight.max(1).min(n);
    if workers <= 1 {
        return reqs.iter().map(|r| proposer.propose(r)).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<ProposalBatch, ProposeError>>>> =
        (0..n).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(req) = reqs.get(i) else { break };
                let result = proposer.propose(req);
                match slots[i].lock() {
                    Ok(mut slot) => *slot = Some(result),
                    Err(poisoned) => *poisoned.into_inner() = Some(result),
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|slot| {
            let value = slot
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Every index below `n` was taken by exactly one worker, and scope joined them all.
            value.unwrap_or_else(|| {
                Err(ProposeError::Transport(
                    "proposal request was not run".into(),
                ))
            })
        })
        .collect()
}
