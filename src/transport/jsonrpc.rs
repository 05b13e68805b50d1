//! The check every client message passes on both transports before rmcp
//! sees it. rmcp drops a line it cannot parse without answering (stdio), or
//! answers it with a plain-text 415 (HTTP), so a client that sent a lone
//! surrogate escape, JSON nested past the parser's limit, an out-of-range
//! number or `tools/call` with non-object arguments waits forever or cannot
//! tell what went wrong. Here each such message gets the JSON-RPC 2.0 error
//! the specification names, with its `id` when one can be read:
//! -32700 (not JSON), -32600 (not one JSON-RPC message: batches included,
//! which MCP no longer has), -32602 (a known method with malformed params)
//! and -32601 (a method nobody serves). Messages are described by position
//! and kind only; their content is never echoed.

use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage};
use serde_json::{Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

/// A message answered here instead of by rmcp.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub code: i64,
    pub message: String,
    /// The request's id, or null when none could be read (JSON-RPC 2.0
    /// section 5: a parse error or an invalid request is answered with null).
    pub id: Value,
    /// A notification gets no answer, even a malformed one; it is dropped.
    pub notification: bool,
}

impl Rejected {
    fn new(code: i64, message: impl Into<String>, id: Value) -> Self {
        Self {
            code,
            message: message.into(),
            id,
            notification: false,
        }
    }

    /// A message longer than the transport accepts: refused unread.
    pub fn too_large(max: usize) -> Self {
        Self::new(
            INVALID_REQUEST,
            format!("invalid request: the message is larger than {max} bytes"),
            Value::Null,
        )
    }

    /// The JSON-RPC error response.
    pub fn response(&self) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": self.id,
            "error": { "code": self.code, "message": self.message },
        })
    }

    /// A fixed name for receipts and metrics.
    pub fn reason(&self) -> &'static str {
        match self.code {
            PARSE_ERROR => "malformed_json",
            INVALID_REQUEST => "invalid_jsonrpc",
            METHOD_NOT_FOUND => "unknown_method",
            _ => "invalid_params",
        }
    }
}

/// Whether rmcp can take `bytes` as one client message.
pub fn screen(bytes: &[u8]) -> Result<(), Rejected> {
    const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Eof => "it ends early",
            serde_json::error::Category::Io => "it could not be read",
            // Syntax covers bad escapes (a lone surrogate), numbers out of
            // range and nesting past the parser's limit.
            serde_json::error::Category::Syntax | serde_json::error::Category::Data => {
                "it is not valid JSON"
            }
        };
        Rejected::new(
            PARSE_ERROR,
            format!(
                "parse error: {kind} (line {}, column {})",
                e.line(),
                e.column()
            ),
            Value::Null,
        )
    })?;
    let object = match &value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return Err(Rejected::new(
                INVALID_REQUEST,
                "invalid request: JSON-RPC batches are not part of MCP; send one message at a time",
                Value::Null,
            ));
        }
        _ => {
            return Err(Rejected::new(
                INVALID_REQUEST,
                "invalid request: a JSON-RPC message is a JSON object",
                Value::Null,
            ));
        }
    };
    let id = match object.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Rejected::new(
            INVALID_REQUEST,
            "invalid request: `jsonrpc` must be \"2.0\"",
            id,
        ));
    }
    let method = match object.get("method") {
        None => None,
        Some(Value::String(method)) => Some(method.as_str()),
        Some(_) => {
            return Err(Rejected::new(
                INVALID_REQUEST,
                "invalid request: `method` must be a string",
                id,
            ));
        }
    };
    if object
        .get("id")
        .is_some_and(|id| !matches!(id, Value::String(_) | Value::Number(_)))
    {
        return Err(Rejected::new(
            INVALID_REQUEST,
            "invalid request: `id` must be a string or a number",
            Value::Null,
        ));
    }
    if method == Some("tools/call")
        && let Some(arguments) = object.get("params").and_then(|p| p.get("arguments"))
        && !arguments.is_object()
        && !arguments.is_null()
    {
        return Err(Rejected::new(
            INVALID_PARAMS,
            "invalid params: tools/call `arguments` must be an object",
            id,
        ));
    }
    match serde_json::from_slice::<ClientJsonRpcMessage>(bytes) {
        // From the bytes, as rmcp parses them: a `Value` would hide a
        // repeated member name (the last wins), which rmcp's typed parse
        // rejects and would then drop unanswered.
        // rmcp parses any other method as a custom request; this server
        // serves none, so it is answered here, with the other refusals.
        Ok(JsonRpcMessage::Request(request))
            if matches!(request.request, ClientRequest::CustomRequest(_)) =>
        {
            return Err(Rejected::new(METHOD_NOT_FOUND, "method not found", id));
        }
        Ok(_) => return Ok(()),
        Err(_) => {}
    }
    let is_request = object.contains_key("id");
    match method {
        Some(_) if !is_request => Err(Rejected {
            notification: true,
            ..Rejected::new(INVALID_PARAMS, "malformed notification", Value::Null)
        }),
        // Known methods with malformed params, and other methods whose
        // params are not even an object; the method is not echoed (it is
        // the client's text, of any length).
        Some(_) => Err(Rejected::new(
            INVALID_PARAMS,
            "invalid params for this method",
            id,
        )),
        None => Err(Rejected::new(
            INVALID_REQUEST,
            "invalid request: neither a request, a notification nor a response",
            id,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(message: &str) -> Option<i64> {
        screen(message.as_bytes()).err().map(|r| r.code)
    }

    #[test]
    fn what_rmcp_would_drop_gets_the_json_rpc_error_the_specification_names() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for (message, expected) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\ud800"}}"#,
                PARSE_ERROR,
            ),
            (deep.as_str(), PARSE_ERROR),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1e400}}"#,
                PARSE_ERROR,
            ),
            ("{\"jsonrpc\":\"2.0\",", PARSE_ERROR),
            ("\u{feff}not json", PARSE_ERROR),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                INVALID_REQUEST,
            ),
            ("42", INVALID_REQUEST),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"db.query","arguments":"SELECT 1"}}"#,
                INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"db.query","arguments":[1]}}"#,
                INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":7}"#,
                INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"no/such/method"}"#,
                METHOD_NOT_FOUND,
            ),
            // Found by the fuzzer: a repeated member passed a `Value` parse.
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"ping"}"#,
                INVALID_PARAMS,
            ),
        ] {
            assert_eq!(code(message), Some(expected), "{message}");
        }
        let rejected = screen(br#"{"jsonrpc":"2.0","id":"a-7","method":"tools/call","params":{"name":"x","arguments":1}}"#)
            .expect_err("non-object arguments");
        assert_eq!(rejected.response()["id"], "a-7");
        assert!(!rejected.message.contains("a-7"));
    }

    #[test]
    fn well_formed_messages_go_on_to_rmcp() {
        for message in [
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"db.query","arguments":{"sql":"SELECT 1"}}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"db.query"}}"#,
            "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"ping\"}",
        ] {
            assert_eq!(screen(message.as_bytes()), Ok(()), "{message}");
        }
    }
}
