//! `propose_many` (kiln-search) driven by this crate's mock backend.
use crate::backends::mock::MockProposer;
use crate::prompt::tests::sample_request;
use kiln_search::propose::{propose_many, ProposalRequest, ProposeError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn results_keep_input_order_and_respect_the_bound() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (f, p) = (Arc::clone(&in_flight), Arc::clone(&peak));
    let mock = MockProposer::from_fn(move |req, _| {
        let now = f.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        // Later requests finish first, so arrival order differs from input order.
        std::thread::sleep(Duration::from_millis(80 - 8 * req.seed));
        f.fetch_sub(1, Ordering::SeqCst);
        if req.seed == 4 {
            return Err(ProposeError::Transport("scripted failure".into()));
        }
        Ok(format!("```cuda\n// kiln: block={} grid=T smem=0\nextern \"C\" __global__ void k(int T) {{}}\n```\n", 32 * (req.seed + 1)))
    });
    let reqs: Vec<ProposalRequest> = (0..9)
        .map(|i| {
            let mut r = sample_request();
            r.seed = i;
            r
        })
        .collect();
    let results = propose_many(&mock, reqs, 3);
    assert_eq!(results.len(), 9);
    for (i, r) in results.iter().enumerate() {
        if i == 4 {
            assert!(r.is_err());
            continue;
        }
        let batch = r.as_ref().expect("batch");
        assert!(
            batch.proposals[0]
                .source
                .contains(&format!("block={} ", 32 * (i + 1))),
            "slot {i}"
        );
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "bound exceeded: {peak}");
    assert!(peak >= 2, "requests did not overlap: {peak}");
    assert_eq!(mock.calls(), 9);
}

#[test]
fn zero_bound_runs_sequentially_and_empty_input_is_fine() {
    let mock = MockProposer::new([
        "```cuda\n// kiln: block=32 grid=T smem=0\nextern \"C\" __global__ void k(int T) {}\n```\n",
    ]);
    assert!(propose_many(&mock, Vec::new(), 4).is_empty());
    let results = propose_many(&mock, vec![sample_request(), sample_request()], 0);
    assert!(results.iter().all(Result::is_ok));
}
