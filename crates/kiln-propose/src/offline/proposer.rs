//! [`OfflineProposer`] as a [`Proposer`]: the search's interface to the generator.

use super::{OfflineError, OfflineProposer};
use kiln_search::propose::error::ProposeError;
use kiln_search::propose::request::{Proposal, ProposalBatch, ProposalRequest, TokenUsage};
use kiln_search::propose::Proposer;

impl From<OfflineError> for ProposeError {
    fn from(e: OfflineError) -> Self {
        ProposeError::InvalidOption(e.to_string())
    }
}

impl Proposer for OfflineProposer {
    fn name(&self) -> &str {
        "offline"
    }

    fn model(&self) -> &str {
        "offline"
    }

    fn observe_tree(&self, tree: &kiln_search::search::Tree) {
        self.observe(tree);
    }

    /// Up to `req.count` rewrites of the parent; the request's seed and step vary the order.
    ///
    /// Call [`OfflineProposer::observe`] with the tree before each step so the
    /// proposer skips sources the tree holds and learns which rewrites worked.
    fn propose(&self, req: &ProposalRequest) -> Result<ProposalBatch, ProposeError> {
        let seed = req.seed ^ u64::from(req.step).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let found = match self.propose_source(
            &req.target.family,
            &req.target.static_dims,
            &req.parent.source,
            req.count,
            seed,
        ) {
            // A family the generator has no knob space for (yet): nothing to
            // propose, said in the session, so an autorun over every target
            // still judges its seed and goes on.
            Err(OfflineError::UnknownFamily(family)) => {
                return Ok(ProposalBatch {
                    proposals: Vec::new(),
                    rejected: vec![format!(
                        "offline: the generator has no knob space for `{family}`; only an LLM backend proposes for {}",
                        req.target.name
                    )],
                    usage: TokenUsage::default(),
                })
            }
            other => other?,
        };
        let rejected = if found.len() < req.count {
            vec![format!(
                "offline: only {} new variants of node {} remain in the {} knob space",
                found.len(),
                req.parent.node_id,
                req.target.family
            )]
        } else {
            Vec::new()
        };
        Ok(ProposalBatch {
            proposals: found
                .into_iter()
                .map(|p| Proposal {
                    source: p.source,
                    reasoning: p.reasoning,
                    prior: Some(p.prior),
                })
                .collect(),
            rejected,
            usage: TokenUsage::default(),
        })
    }
}
