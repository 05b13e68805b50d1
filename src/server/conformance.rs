//! The MCP side of the conformance suite's fixtures (`conformance` builds
//! only): fixture tool calls go through the gate like every call (see
//! `crate::tools::conformance`) and their answers become MCP results here;
//! the suite's resources, template, prompts and completions are served as
//! it expects. A fixture's `requestState` is sealed and opened with the same
//! codec as a held call's, so a tampered state is refused the same way.

use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ContentBlock,
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, InputRequests, InputRequiredResult,
    ProgressNotificationParam, Prompt, ReadResourceResult, Resource, ResourceTemplate, SealOptions,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{McpServer, tool_result};
use crate::gate::{GateOutcome, Status};
use crate::tools::conformance::{NAMES, REQUEST};

/// How long a fixture's sealed state stays valid.
const STATE_TTL: Duration = Duration::from_secs(600);
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

/// A fixture's `requestState`: which fixture asked, and what it keeps.
#[derive(Serialize, Deserialize)]
struct FixtureState {
    fixture: String,
    state: Value,
}

pub(super) fn is_fixture_tool(name: &str) -> bool {
    NAMES.contains(&name)
}

fn internal(what: &str) -> McpError {
    McpError::internal_error(format!("conformance fixture: {what}"), None)
}

fn stale_state() -> McpError {
    McpError::invalid_params(
        "requestState is invalid, expired or for another request",
        None,
    )
}

impl McpServer {
    fn open_fixture_state(&self, name: &str, sealed: Option<&String>) -> Result<Value, McpError> {
        let Some(sealed) = sealed else {
            return Ok(Value::Null);
        };
        self.app
            .request_state
            .open_json::<FixtureState>(sealed)
            .ok()
            .filter(|s| s.fixture == name)
            .map(|s| s.state)
            .ok_or_else(stale_state)
    }

    fn ask(&self, name: &str, asked: &Value) -> Result<InputRequiredResult, McpError> {
        let requests: InputRequests = serde_json::from_value(asked["requests"].clone())
            .map_err(|_| internal("input requests"))?;
        let sealed = self
            .app
            .request_state
            .seal_json_with(
                &FixtureState {
                    fixture: name.to_string(),
                    state: asked["state"].clone(),
                },
                &SealOptions::new().ttl(STATE_TTL),
            )
            .map_err(|_| internal("sealing"))?;
        Ok(InputRequiredResult::new(Some(requests), Some(sealed)))
    }

    /// One gated call of fixture `name` with `arguments` and what the
    /// server knows of the request.
    async fn run_fixture(
        &self,
        name: &str,
        mut arguments: serde_json::Map<String, Value>,
        request: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<GateOutcome, McpError> {
        arguments.insert(REQUEST.into(), request);
        self.app
            .tools
            .call(
                &self.app.gate,
                name,
                self.origin(context),
                self.caller(context),
                Some(arguments),
            )
            .await
            .ok_or_else(|| internal("not registered"))
    }

    /// A request to the client over its session (sampling and logging are
    /// deprecated by SEP-2577; the 0.1.16 suite still tests them); its
    /// answer as JSON.
    #[allow(deprecated)]
    async fn ask_over_session(
        &self,
        asked: &Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<Value, McpError> {
        let params = asked["params"].clone();
        let failed = |e: rmcp::ServiceError| {
            McpError::internal_error(format!("the client's answer: {e}"), None)
        };
        let answer = match asked["method"].as_str() {
            Some("sampling/createMessage") => {
                let params = serde_json::from_value(params).map_err(|_| internal("sampling"))?;
                serde_json::to_value(context.peer.create_message(params).await.map_err(failed)?)
            }
            Some("elicitation/create") => {
                let params = serde_json::from_value(params).map_err(|_| internal("elicitation"))?;
                serde_json::to_value(
                    context
                        .peer
                        .create_elicitation(params)
                        .await
                        .map_err(failed)?,
                )
            }
            _ => return Err(internal("client request")),
        };
        answer.map_err(|_| internal("client answer"))
    }

    /// Client logging is sent when the session set a level or the request
    /// asked for one (`_meta` logLevel, 2026-07-28), never otherwise.
    fn client_logging_wanted(&self, context: &RequestContext<RoleServer>) -> bool {
        self.client_logging
            .load(std::sync::atomic::Ordering::Relaxed)
            || context
                .meta
                .0
                .contains_key("io.modelcontextprotocol/logLevel")
    }

    #[allow(deprecated)]
    async fn log_to_client(&self, lines: &[Value], context: &RequestContext<RoleServer>) {
        for line in lines {
            let _ = context
                .peer
                .notify_logging_message(
                    rmcp::model::LoggingMessageNotificationParam::new(
                        rmcp::model::LoggingLevel::Info,
                        line.clone(),
                    )
                    .with_logger("dualtrust-conformance"),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) async fn call_fixture(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.to_string();
        let state = self.open_fixture_state(&name, request.request_state.as_ref())?;
        let arguments = request.arguments.unwrap_or_default();
        let mut about = json!({
            "client_capabilities": context.client_capabilities(),
            "input_responses": request.input_responses,
            "state": state,
        });
        let mut outcome = self
            .run_fixture(&name, arguments.clone(), about.clone(), &context)
            .await?;
        // A session fixture asks its client mid-call, then is called again
        // with the answer: two calls, two receipts.
        if let Some(asked) = outcome
            .result
            .as_ref()
            .and_then(|r| r.get("client_request"))
            .cloned()
        {
            about["client_response"] = self.ask_over_session(&asked, &context).await?;
            outcome = self.run_fixture(&name, arguments, about, &context).await?;
        }
        if outcome.status != Status::Ok {
            // Input that is not what was asked for is a protocol error
            // (SEP-2322), not a tool's failure.
            if let Some(error) = outcome
                .error
                .as_ref()
                .filter(|e| e.code == "invalid_input_response")
            {
                return Err(McpError::invalid_params(
                    error.message.clone(),
                    serde_json::to_value(&outcome).ok(),
                ));
            }
            return Ok(tool_result(&outcome).into());
        }
        let result = outcome.result.clone().unwrap_or_default();
        if let Some(required) = result.get("missing_capability") {
            let required: ClientCapabilities =
                serde_json::from_value(required.clone()).unwrap_or_default();
            return Err(McpError::missing_required_client_capability(required));
        }
        if let Some(asked) = result.get("input_required") {
            return Ok(CallToolResponse::InputRequired(self.ask(&name, asked)?));
        }
        if let Some(lines) = result.get("log").and_then(Value::as_array)
            && self.client_logging_wanted(&context)
        {
            self.log_to_client(lines, &context).await;
        }
        if let (Some(steps), Some(token)) = (
            result.get("progress").and_then(Value::as_array),
            context.meta.get_progress_token(),
        ) {
            for step in steps.iter().filter_map(Value::as_f64) {
                let _ = context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), step).with_total(100.0),
                    )
                    .await;
            }
        }
        let content: Vec<ContentBlock> =
            serde_json::from_value(result["content"].clone()).map_err(|_| internal("content"))?;
        let mut answer = if result["is_error"] == true {
            CallToolResult::error(content)
        } else {
            CallToolResult::success(content)
        };
        answer.structured_content = serde_json::to_value(&outcome).ok();
        Ok(answer.into())
    }

    pub(super) fn fixture_get_prompt(
        &self,
        request: &GetPromptRequestParams,
    ) -> Option<Result<GetPromptResponse, McpError>> {
        let argument = |key: &str| {
            request
                .arguments
                .as_ref()
                .and_then(|a| a.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let text =
            |text: String| json!({ "role": "user", "content": { "type": "text", "text": text } });
        let messages = match request.name.as_str() {
            "test_simple_prompt" => json!([text("This is a simple prompt for testing.".into())]),
            "test_prompt_with_arguments" => json!([text(format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                argument("arg1"),
                argument("arg2")
            ))]),
            "test_prompt_with_embedded_resource" => json!([
                { "role": "user", "content": { "type": "resource", "resource": {
                    "uri": argument("resourceUri"), "mimeType": "text/plain", "text": "Embedded resource content for testing." } } },
                text("Please process the embedded resource above.".into()),
            ]),
            "test_prompt_with_image" => json!([
                { "role": "user", "content": { "type": "image", "data": PNG, "mimeType": "image/png" } },
                text("Please analyze the image above.".into()),
            ]),
            "test_input_required_result_prompt" => {
                let answer = request
                    .input_responses
                    .as_ref()
                    .and_then(|r| r.get("user_context"))
                    .filter(|r| r["action"] == "accept")
                    .and_then(|r| r["content"]["context"].as_str());
                match answer {
                    Some(context) => json!([text(format!("Prompt with context: {context}"))]),
                    None => {
                        let asked = json!({
                            "requests": { "user_context": {
                                "method": "elicitation/create",
                                "params": { "message": "What context should the prompt use?",
                                    "requestedSchema": { "type": "object", "properties": { "context": { "type": "string" } }, "required": ["context"] } },
                            } },
                            "state": null,
                        });
                        return Some(
                            self.ask(&request.name, &asked)
                                .map(GetPromptResponse::InputRequired),
                        );
                    }
                }
            }
            _ => return None,
        };
        Some(
            serde_json::from_value::<GetPromptResult>(
                json!({ "messages": messages, "resultType": "complete" }),
            )
            .map(GetPromptResponse::Complete)
            .map_err(|_| internal("prompt")),
        )
    }
}

pub(super) fn prompts() -> Vec<Prompt> {
    let argument = |name: &str, description: &str| json!({ "name": name, "description": description, "required": true });
    serde_json::from_value(json!([
        { "name": "test_simple_prompt", "description": "A simple prompt without arguments" },
        { "name": "test_prompt_with_arguments", "description": "A prompt with two arguments",
          "arguments": [argument("arg1", "First test argument"), argument("arg2", "Second test argument")] },
        { "name": "test_prompt_with_embedded_resource", "description": "A prompt with an embedded resource",
          "arguments": [argument("resourceUri", "URI of the resource to embed")] },
        { "name": "test_prompt_with_image", "description": "A prompt with an image" },
        { "name": "test_input_required_result_prompt", "description": "A prompt that asks for context first" },
    ]))
    .unwrap_or_default()
}

pub(super) fn resources() -> Vec<Resource> {
    serde_json::from_value(json!([
        { "uri": "test://static-text", "name": "static-text", "description": "A static text resource", "mimeType": "text/plain" },
        { "uri": "test://static-binary", "name": "static-binary", "description": "A static binary resource", "mimeType": "image/png" },
    ]))
    .unwrap_or_default()
}

pub(super) fn templates() -> Vec<ResourceTemplate> {
    serde_json::from_value(json!([
        { "uriTemplate": "test://template/{id}/data", "name": "template", "description": "Data for an id", "mimeType": "application/json" },
    ]))
    .unwrap_or_default()
}

/// Only the suite's resources can be subscribed to.
pub(super) fn subscribable(uri: &str) -> Result<(), McpError> {
    if uri.starts_with("test://") {
        Ok(())
    } else {
        Err(McpError::invalid_params(
            "only test:// fixture resources take subscriptions",
            None,
        ))
    }
}

pub(super) fn read(uri: &str) -> Option<ReadResourceResult> {
    let contents = match uri {
        "test://static-text" => {
            json!({ "uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource." })
        }
        "test://static-binary" => json!({ "uri": uri, "mimeType": "image/png", "blob": PNG }),
        _ => {
            let id = uri
                .strip_prefix("test://template/")?
                .strip_suffix("/data")?;
            if id.is_empty() || id.contains('/') {
                return None;
            }
            let text =
                json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") });
            json!({ "uri": uri, "mimeType": "application/json", "text": text.to_string() })
        }
    };
    serde_json::from_value(json!({
        "contents": [contents], "resultType": "complete", "ttlMs": 60_000, "cacheScope": "public",
    }))
    .ok()
}
