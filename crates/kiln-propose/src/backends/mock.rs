//! The `mock` backend: canned answers for tests, parsed exactly like a model's.
//!
//! Built from a list of answer texts (returned in call order, starting over when used up)
//! or from a function of the request. With concurrent calls "call order" is arrival order,
//! so a search that must be deterministic under concurrency should use
//! [`MockProposer::from_fn`] and answer from the request (its `seed`, `step`, parent).
//! Every request received is recorded for assertions.

use super::batch_from_answer;
use crate::prompt::Prompt;
use kiln_search::propose::error::ProposeError;
use kiln_search::propose::request::{ProposalBatch, ProposalRequest, TokenUsage};
use kiln_search::propose::Proposer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Produces the answer text for a request and the 0-based call number.
pub type AnswerFn = dyn Fn(&ProposalRequest, usize) -> Result<String, ProposeError> + Send + Sync;

/// A proposer that returns canned answers.
pub struct MockProposer {
    source: Source,
    calls: AtomicUsize,
    requests: Mutex<Vec<ProposalRequest>>,
}

enum Source {
    List(Vec<String>),
    Func(Box<AnswerFn>),
}

impl MockProposer {
    /// Answers with `answers` in call order, starting over when they run out.
    pub fn new<S: Into<String>>(answers: impl IntoIterator<Item = S>) -> Self {
        Self::with_source(Source::List(answers.into_iter().map(Into::into).collect()))
    }

    /// Answers with whatever `f` returns for the request and the call number.
    pub fn from_fn(
        f: impl Fn(&ProposalRequest, usize) -> Result<String, ProposeError> + Send + Sync + 'static,
    ) -> Self {
        Self::with_source(Source::Func(Box::new(f)))
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            calls: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        }
    }

    /// The requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<ProposalRequest> {
        self.requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// How many times `propose` was called.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for MockProposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.source {
            Source::List(a) => format!("{} canned answers", a.len()),
            Source::Func(_) => "answer function".to_string(),
        };
        f.debug_struct("MockProposer")
            .field("source", &kind)
            .field("calls", &self.calls())
            .finish()
    }
}

impl Proposer for MockProposer {
    fn name(&self) -> &str {
        "mock"
    }

    fn model(&self) -> &str {
        "mock"
    }

    fn propose(&self, req: &ProposalRequest) -> Result<ProposalBatch, ProposeError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        match self.requests.lock() {
            Ok(mut r) => r.push(req.clone()),
            Err(poisoned) => poisoned.into_inner().push(req.clone()),
        }
        let answer = match &self.source {
            Source::List(answers) if answers.is_empty() => {
                return Err(ProposeError::NoUsableAnswer {
                    reasons: vec!["the mock proposer has no answers".into()],
                });
            }
            Source::List(answers) => answers[call % answers.len()].clone(),
            Source::Func(f) => f(req, call)?,
        };
        // Deterministic stand-in for token counts: about four characters per token.
        let usage = TokenUsage {
            input_tokens: (Prompt::for_request(req).combined().len() / 4) as u64,
            output_tokens: (answer.len() / 4) as u64,
        };
        batch_from_answer(&answer, req.count, usage, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::tests::sample_request;

    fn answer(block: usize) -> String {
        format!("```cuda\n// kiln: block={block} grid=T smem=0\nextern \"C\" __global__ void k(int T) {{}}\n```\n")
    }

    #[test]
    fn answers_come_in_order_and_cycle() {
        let mock = MockProposer::new([answer(64), answer(128)]);
        let req = sample_request();
        let blocks: Vec<String> = (0..3)
            .map(|_| {
                mock.propose(&req).expect("batch").proposals[0]
                    .source
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(
            blocks,
            [
                "// kiln: block=64 grid=T smem=0",
                "// kiln: block=128 grid=T smem=0",
                "// kiln: block=64 grid=T smem=0"
            ]
        );
        assert_eq!(mock.calls(), 3);
        assert_eq!(mock.requests().len(), 3);
        assert_eq!(mock.requests()[0], req);
    }

    #[test]
    fn function_answers_from_the_request() {
        let mock = MockProposer::from_fn(|req, _| Ok(answer(req.seed as usize)));
        let mut req = sample_request();
        req.seed = 96;
        let batch = mock.propose(&req).expect("batch");
        assert!(batch.proposals[0].source.contains("block=96"));
        assert!(batch.usage.input_tokens > 0 && batch.usage.output_tokens > 0);
        assert_eq!(mock.name(), "mock");
    }

    #[test]
    fn unusable_and_empty_mocks_fail_clearly() {
        let err = MockProposer::new(["no code here"])
            .propose(&sample_request())
            .unwrap_err();
        assert!(matches!(err, ProposeError::NoUsableAnswer { .. }));
        let err = MockProposer::new(Vec::<String>::new())
            .propose(&sample_request())
            .unwrap_err();
        assert!(err.to_string().contains("no answers"), "{err}");
    }
}
