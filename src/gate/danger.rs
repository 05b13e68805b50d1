//! DANGER: the benchmark's baseline, a gate that checks nothing. Compiled
//! only with the benchmark-only `bench` feature, refused in production
//! mode at start-up (`App::build_gate_off`), and the only code that makes
//! the step proofs without their steps.

use serde_json::{Map, Value};

use super::admit::Action;
use super::lease::LeaseConsumed;
use super::quorum::QuorumMet;
use super::record::{ErrorInfo, GateOutcome, Status};
use super::{Authenticated, Authorized, Denial, Gate, Tool};

impl Gate {
    /// Whether this gate lets calls through unchecked.
    pub fn is_off(&self) -> bool {
        self.gate_off
    }

    pub(crate) fn switch_off_for_benchmark(&mut self) {
        self.gate_off = true;
    }

    /// The tool's own argument parsing, classification and execution, and
    /// nothing of the gate: the baseline the benchmark divides by.
    pub(super) async fn run_ungated<T: Tool>(
        &self,
        tool: &T,
        arguments: Option<Map<String, Value>>,
    ) -> GateOutcome {
        let failed = |status: Status, error: ErrorInfo| GateOutcome {
            status,
            result: None,
            error: Some(error),
            approval: None,
            receipt: None,
            log: None,
        };
        let args: T::Args =
            match serde_json::from_value(Value::Object(arguments.unwrap_or_default())) {
                Ok(args) => args,
                Err(e) => {
                    return failed(
                        Status::Denied,
                        Denial::InvalidArguments(e.to_string()).into(),
                    );
                }
            };
        let classification = match tool.classify(&args) {
            Ok(c) => c,
            Err(refusal) => return failed(Status::Denied, Denial::Tool(refusal).into()),
        };
        let caller = Authenticated::unchecked_for_benchmark();
        let action = Action::unchecked_for_benchmark::<T>(&classification);
        let lease = LeaseConsumed::unchecked_for_benchmark();
        let quorum = QuorumMet::unchecked_for_benchmark();
        let call =
            Authorized::<T>::new(&caller, &action, &lease, &quorum, args, classification.plan);
        match tool.execute(call).await {
            Ok(executed) => GateOutcome {
                status: Status::Ok,
                result: Some(executed.result),
                error: None,
                approval: None,
                receipt: None,
                log: None,
            },
            Err(refusal) => failed(Status::Error, Denial::Failed(refusal).into()),
        }
    }
}
