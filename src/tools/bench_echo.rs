//! `bench.echo`: the trivial tool the benchmark suite (`tools/bench`) calls
//! on dualtrust, on a bare rmcp server and on a FastMCP server alike, so the
//! figures compare transports and gates rather than tool work. It exists
//! only in builds with the `bench` feature.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::gate::{Authorized, Class, Classification, Executed, Refusal, Tool};

/// Longer texts are refused: the benchmark sends a few bytes.
const MAX_TEXT: usize = 4096;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EchoArgs {
    /// Returned unchanged.
    pub text: String,
}

pub struct BenchEcho;

impl Tool for BenchEcho {
    const NAME: &'static str = "bench.echo";
    const TITLE: &'static str = "Echo (benchmark builds only)";
    const DESCRIPTION: &'static str =
        "Returns its text unchanged. Exists only in `bench` builds. Needs `bench:echo`.";
    const READ_ONLY: bool = true;
    type Args = EchoArgs;
    type Plan = ();

    fn classify(&self, args: &EchoArgs) -> Result<Classification, Refusal> {
        if args.text.len() > MAX_TEXT {
            return Err(Refusal::new(
                "invalid_arguments",
                format!("text is limited to {MAX_TEXT} bytes"),
            ));
        }
        Ok(Classification {
            class: Class::Read,
            summary: String::new(),
            plan: (),
        })
    }

    async fn execute(&self, call: Authorized<'_, Self>) -> Result<Executed, Refusal> {
        Ok(Executed {
            result: json!({ "text": call.args().text }),
            outcome: serde_json::Value::Null,
        })
    }
}
