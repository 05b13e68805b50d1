//! The MCP conformance suite's fixture tools (`test_…`), behind the gate like
//! every tool: scope `conformance:test`, a lease, a receipt. Only in builds
//! with the `conformance` feature, which refuse production configurations
//! (`App::build`); `tools/conformance/run` builds one and runs the suite
//! against it.
//!
//! A fixture answers with a description of the MCP result, which the
//! server turns into one (`crate::server`): content blocks, an error
//! result, progress notifications, a missing client capability, or input
//! the client must supply (SEP-2322), with state the server seals with the
//! same codec as a held call's. What the server hands a fixture about the
//! request travels in the reserved argument [`REQUEST`].

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::ToolSet;
use crate::gate::{Authorized, Class, Classification, Executed, Refusal, Tool};

/// The argument the server fills for a fixture: `client_capabilities`,
/// `input_responses` and `state` (the opened `requestState`), as the
/// request carried them.
pub const REQUEST: &str = "_mcp";
/// The scope every fixture needs.
pub const SCOPE: &str = "conformance:test";

/// The suite's reference image (1×1 PNG) and sound (a WAV header).
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

fn text(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

fn image() -> Value {
    json!({ "type": "image", "data": PNG, "mimeType": "image/png" })
}

fn content(blocks: Vec<Value>) -> Value {
    json!({ "content": blocks })
}

fn elicit(message: &str, field: &str, kind: &str) -> Value {
    json!({
        "method": "elicitation/create",
        "params": {
            "message": message,
            "requestedSchema": { "type": "object", "properties": { field: { "type": kind } }, "required": [field] },
        },
    })
}

fn sample(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "method": "sampling/createMessage",
        "params": {
            "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }],
            "maxTokens": max_tokens,
        },
    })
}

fn list_roots() -> Value {
    json!({ "method": "roots/list", "params": {} })
}

/// Asks the client for `requests`; `state` comes back sealed.
fn input_required(requests: Value, state: Value) -> Value {
    json!({ "input_required": { "requests": requests, "state": state } })
}

/// Sends `request` to the client over its session (the stateful
/// protocol), then calls the fixture again with the answer.
fn client_request(method: &str, params: Value) -> Value {
    json!({ "client_request": { "method": method, "params": params } })
}

/// What the server handed over about the request.
struct Request<'a> {
    responses: Option<&'a Map<String, Value>>,
    state: &'a Value,
    capabilities: &'a Value,
    client_response: Option<&'a Value>,
}

impl<'a> Request<'a> {
    fn of(args: &'a Map<String, Value>) -> Self {
        static NULL: Value = Value::Null;
        let request = args.get(REQUEST).unwrap_or(&NULL);
        Self {
            responses: request.get("input_responses").and_then(Value::as_object),
            state: request.get("state").unwrap_or(&NULL),
            capabilities: request.get("client_capabilities").unwrap_or(&NULL),
            client_response: request.get("client_response"),
        }
    }

    fn response(&self, key: &str) -> Option<&'a Value> {
        self.responses.and_then(|r| r.get(key))
    }

    /// An accepted elicitation's string `field`.
    fn elicited(&self, key: &str, field: &str) -> Option<&'a str> {
        let answer = self.response(key)?;
        (answer.get("action")?.as_str()? == "accept")
            .then(|| answer.get("content")?.get(field)?.as_str())
            .flatten()
    }

    fn declared(&self, capability: &str) -> bool {
        self.capabilities
            .get(capability)
            .is_some_and(Value::is_object)
    }
}

/// The request a session fixture sends its client.
fn session_request_params(name: &str, args: &Map<String, Value>) -> Value {
    let argument = |key: &str, default: &str| {
        args.get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    match name {
        "test_sampling" => json!({
            "messages": [{ "role": "user", "content": { "type": "text", "text": argument("prompt", "Hello") } }],
            "maxTokens": 100,
        }),
        "test_elicitation" => json!({
            "message": argument("message", "Please provide your information"),
            "requestedSchema": { "type": "object", "properties": {
                "username": { "type": "string", "description": "User's response" },
                "email": { "type": "string", "description": "User's email address" },
            }, "required": ["username", "email"] },
        }),
        "test_elicitation_sep1034_defaults" => json!({
            "message": "Please provide values (all have defaults)",
            "requestedSchema": { "type": "object", "properties": {
                "name": { "type": "string", "description": "User's name", "default": "John Doe" },
                "age": { "type": "integer", "description": "User's age", "default": 30 },
                "score": { "type": "number", "description": "User's score", "default": 95.5 },
                "status": { "type": "string", "description": "User's status", "enum": ["active", "inactive", "pending"], "default": "active" },
                "verified": { "type": "boolean", "description": "Whether user is verified", "default": true },
            } },
        }),
        _ => json!({
            "message": "Please pick from each list",
            "requestedSchema": { "type": "object", "properties": {
                "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
                "titledSingle": { "type": "string", "oneOf": [
                    { "const": "value1", "title": "First Option" },
                    { "const": "value2", "title": "Second Option" },
                    { "const": "value3", "title": "Third Option" },
                ] },
                "legacyEnum": { "type": "string", "enum": ["opt1", "opt2", "opt3"], "enumNames": ["Option One", "Option Two", "Option Three"] },
                "untitledMulti": { "type": "array", "items": { "type": "string", "enum": ["option1", "option2", "option3"] } },
                "titledMulti": { "type": "array", "items": { "anyOf": [
                    { "const": "value1", "title": "First Choice" },
                    { "const": "value2", "title": "Second Choice" },
                    { "const": "value3", "title": "Third Choice" },
                ] } },
            } },
        }),
    }
}

fn sampled_text(answer: Option<&Value>) -> Option<&str> {
    answer?.get("content")?.get("text")?.as_str()
}

fn respond(name: &str, args: &Map<String, Value>) -> Result<Value, Refusal> {
    let request = Request::of(args);
    let invalid = |what: &str| Refusal::new("invalid_input_response", what.to_string());
    Ok(match name {
        "test_simple_text" => content(vec![text("This is a simple text response for testing.")]),
        "test_image_content" => content(vec![image()]),
        "test_audio_content" => content(vec![
            json!({ "type": "audio", "data": WAV, "mimeType": "audio/wav" }),
        ]),
        "test_embedded_resource" => content(vec![json!({
            "type": "resource",
            "resource": { "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content." },
        })]),
        "test_multiple_content_types" => content(vec![
            text("Multiple content types test:"),
            image(),
            json!({
                "type": "resource",
                "resource": { "uri": "test://mixed-content-resource", "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}" },
            }),
        ]),
        "test_error_handling" => json!({
            "content": [text("This tool intentionally returns an error for testing")],
            "is_error": true,
        }),
        "test_tool_with_progress" => json!({
            "content": [text("Progress test completed")],
            "progress": [0, 50, 100],
        }),
        "test_missing_capability" if !request.declared("sampling") => {
            json!({ "missing_capability": { "sampling": {} } })
        }
        "test_missing_capability" => content(vec![text("sampling is declared")]),
        "test_streaming_elicitation" => input_required(
            json!({ "user_input": elicit("Type anything", "value", "string") }),
            Value::Null,
        ),
        "test_logging_tool" => content(vec![text("Logging tool completed")]),
        "test_tool_with_logging" => json!({
            "content": [text("Logging test completed")],
            "log": ["Tool execution started", "Tool processing data", "Tool execution completed"],
        }),
        "test_sampling"
        | "test_elicitation"
        | "test_elicitation_sep1034_defaults"
        | "test_elicitation_sep1330_enums" => {
            let (capability, method) = if name == "test_sampling" {
                ("sampling", "sampling/createMessage")
            } else {
                ("elicitation", "elicitation/create")
            };
            if !request.declared(capability) {
                return Ok(json!({
                    "content": [text(&format!("the client did not declare {capability}"))],
                    "is_error": true,
                }));
            }
            match request.client_response {
                Some(answer) if name == "test_sampling" => {
                    let said = answer
                        .get("content")
                        .and_then(|c| c.get("text"))
                        .and_then(Value::as_str);
                    content(vec![text(&format!(
                        "LLM response: {}",
                        said.unwrap_or("No text response")
                    ))])
                }
                Some(answer) => content(vec![text(&format!(
                    "Elicitation completed: action={}, content={}",
                    answer
                        .get("action")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown"),
                    answer.get("content").unwrap_or(&Value::Null)
                ))]),
                None => client_request(method, session_request_params(name, args)),
            }
        }
        "test_input_required_result_elicitation" => match request.response("user_name") {
            None => input_required(
                json!({ "user_name": elicit("What is your name?", "name", "string") }),
                Value::Null,
            ),
            Some(_) => match request.elicited("user_name", "name") {
                Some(name) => content(vec![text(&format!("Hello, {name}!"))]),
                None => {
                    return Err(invalid(
                        "user_name must be an accepted elicitation with a string `name`",
                    ));
                }
            },
        },
        "test_input_required_result_sampling" => {
            match sampled_text(request.response("capital_question")) {
                None => input_required(
                    json!({ "capital_question": sample("What is the capital of France?", 100) }),
                    Value::Null,
                ),
                Some(answer) => content(vec![text(&format!("The model said: {answer}"))]),
            }
        }
        "test_input_required_result_list_roots" => {
            let roots = request
                .response("client_roots")
                .and_then(|r| r.get("roots"))
                .and_then(Value::as_array);
            match roots {
                None => input_required(json!({ "client_roots": list_roots() }), Value::Null),
                Some(roots) => {
                    let uris: Vec<&str> = roots
                        .iter()
                        .filter_map(|r| r.get("uri")?.as_str())
                        .collect();
                    content(vec![text(&format!(
                        "Found {} root(s): {}",
                        uris.len(),
                        uris.join(", ")
                    ))])
                }
            }
        }
        "test_input_required_result_request_state"
        | "test_input_required_result_tampered_state" => {
            let confirmed = request
                .response("confirm")
                .and_then(|r| r.get("content"))
                .and_then(|c| c.get("ok"))
                .and_then(Value::as_bool);
            match (
                confirmed,
                request.state.get("asked").and_then(Value::as_bool),
            ) {
                (Some(ok), Some(true)) => content(vec![text(&format!(
                    "state-ok: requestState verified, confirmed={ok}"
                ))]),
                (Some(_), _) => {
                    return Err(invalid(
                        "the confirmation needs the requestState it answers",
                    ));
                }
                (None, _) => input_required(
                    json!({ "confirm": {
                        "method": "elicitation/create",
                        "params": { "message": "Please confirm", "requestedSchema": { "type": "object", "properties": { "ok": { "type": "boolean" } }, "required": ["ok"] } },
                    } }),
                    json!({ "asked": true }),
                ),
            }
        }
        "test_input_required_result_multiple_inputs" => {
            let name = request.elicited("user_name", "name");
            let greeting = sampled_text(request.response("greeting"));
            let roots = request
                .response("client_roots")
                .and_then(|r| r.get("roots"));
            match (name, greeting, roots, request.state.get("asked")) {
                (Some(name), Some(greeting), Some(_), Some(_)) => {
                    content(vec![text(&format!("{greeting} {name}, your roots are in"))])
                }
                _ => input_required(
                    json!({
                        "user_name": elicit("What is your name?", "name", "string"),
                        "greeting": sample("Generate a greeting", 50),
                        "client_roots": list_roots(),
                    }),
                    json!({ "asked": true }),
                ),
            }
        }
        "test_input_required_result_multi_round" => {
            let earlier = request.state.get("name").and_then(Value::as_str);
            match (
                earlier,
                request.elicited("step1", "name"),
                request.elicited("step2", "color"),
            ) {
                (Some(name), _, Some(color)) => content(vec![text(&format!(
                    "Multi-round complete for {name} who likes {color}"
                ))]),
                (None, Some(name), _) => input_required(
                    json!({ "step2": elicit("Step 2: What is your favorite color?", "color", "string") }),
                    json!({ "round": 2, "name": name }),
                ),
                _ => input_required(
                    json!({ "step1": elicit("Step 1: What is your name?", "name", "string") }),
                    json!({ "round": 1 }),
                ),
            }
        }
        "test_input_required_result_capabilities" => {
            let mut requests = Map::new();
            if request.declared("sampling") {
                requests.insert("sample".into(), sample("Say something", 20));
            }
            if request.declared("elicitation") {
                requests.insert("ask".into(), elicit("Say something", "value", "string"));
            }
            if request.declared("roots") {
                requests.insert("roots".into(), list_roots());
            }
            if requests.is_empty() {
                content(vec![text("the client declared nothing to ask it for")])
            } else {
                input_required(Value::Object(requests), Value::Null)
            }
        }
        other => {
            return Err(Refusal::new(
                "unknown_fixture",
                format!("no fixture {other}"),
            ));
        }
    })
}

macro_rules! fixtures {
    ($($ty:ident => $name:literal, $description:literal;)*) => {
        $(
            pub struct $ty;

            impl Tool for $ty {
                const NAME: &'static str = $name;
                const TITLE: &'static str = $name;
                const DESCRIPTION: &'static str = $description;
                const READ_ONLY: bool = true;
                type Args = Map<String, Value>;
                type Plan = ();

                fn classify(&self, _args: &Map<String, Value>) -> Result<Classification, Refusal> {
                    Ok(Classification {
                        class: Class::Read,
                        summary: format!("conformance fixture {}", $name),
                        plan: (),
                    })
                }

                async fn execute(&self, call: Authorized<'_, Self>) -> Result<Executed, Refusal> {
                    let result = respond($name, call.args())?;
                    Ok(Executed { result, outcome: Value::Null })
                }
            }
        )*

        /// Every fixture tool's name.
        pub const NAMES: &[&str] = &[$($name),*];

        pub fn register(tools: &mut ToolSet) {
            $(tools.register(Arc::new($ty));)*
        }
    };
}

fixtures! {
    SimpleText => "test_simple_text", "Returns simple text content";
    ImageContent => "test_image_content", "Returns image content";
    AudioContent => "test_audio_content", "Returns audio content";
    EmbeddedResource => "test_embedded_resource", "Returns embedded resource content";
    MultipleContentTypes => "test_multiple_content_types", "Returns text, image and resource content";
    ErrorHandling => "test_error_handling", "Always returns an error result";
    ToolWithProgress => "test_tool_with_progress", "Reports progress notifications";
    MissingCapability => "test_missing_capability", "Needs the sampling capability";
    StreamingElicitation => "test_streaming_elicitation", "Asks for input without a request on the stream";
    LoggingTool => "test_logging_tool", "Logs only at a requested log level";
    InputElicitation => "test_input_required_result_elicitation", "Asks the user's name";
    InputSampling => "test_input_required_result_sampling", "Asks the client's model";
    InputListRoots => "test_input_required_result_list_roots", "Asks the client's roots";
    InputRequestState => "test_input_required_result_request_state", "Keeps state across rounds";
    InputMultiple => "test_input_required_result_multiple_inputs", "Asks three things at once";
    InputMultiRound => "test_input_required_result_multi_round", "Asks in two rounds";
    InputTamperedState => "test_input_required_result_tampered_state", "Refuses tampered state";
    InputCapabilities => "test_input_required_result_capabilities", "Asks only what the client declared";
    ToolWithLogging => "test_tool_with_logging", "Logs three messages during the call";
    Sampling => "test_sampling", "Asks the client's model over the session";
    Elicitation => "test_elicitation", "Asks the user over the session";
    ElicitationDefaults => "test_elicitation_sep1034_defaults", "Asks with default values (SEP-1034)";
    ElicitationEnums => "test_elicitation_sep1330_enums", "Asks with every enum form (SEP-1330)";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(request: Value) -> Map<String, Value> {
        let mut args = Map::new();
        args.insert(REQUEST.into(), request);
        args
    }

    #[test]
    fn fixtures_ask_until_answered_and_validate_what_they_get() {
        let ask =
            respond("test_input_required_result_elicitation", &args(json!({}))).expect("asks");
        assert!(ask["input_required"]["requests"]["user_name"].is_object());
        let done = respond(
            "test_input_required_result_elicitation",
            &args(json!({ "input_responses": { "user_name": { "action": "accept", "content": { "name": "Alice" } } } })),
        )
        .expect("answers");
        assert_eq!(done["content"][0]["text"], "Hello, Alice!");
        let bad = respond(
            "test_input_required_result_elicitation",
            &args(json!({ "input_responses": { "user_name": 12345 } })),
        );
        assert!(bad.is_err());
        // A confirmation without the state that asked for it is refused.
        let forged = respond(
            "test_input_required_result_request_state",
            &args(
                json!({ "input_responses": { "confirm": { "action": "accept", "content": { "ok": true } } } }),
            ),
        );
        assert!(forged.is_err());
        let round2 = respond(
            "test_input_required_result_multi_round",
            &args(json!({ "input_responses": { "step1": { "action": "accept", "content": { "name": "Alice" } } } })),
        )
        .expect("round 2");
        assert_eq!(round2["input_required"]["state"]["name"], "Alice");
        let sampling_only = respond(
            "test_input_required_result_capabilities",
            &args(json!({ "client_capabilities": { "sampling": {} } })),
        )
        .expect("asks");
        let requests = sampling_only["input_required"]["requests"]
            .as_object()
            .expect("requests");
        assert_eq!(requests.keys().collect::<Vec<_>>(), ["sample"]);
    }
}
