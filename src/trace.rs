//! W3C Trace Context (`traceparent`) from a request: the MCP `_meta` key of
//! that name (SEP-414, 2026-07-28) or the HTTP header. Only the trace id is
//! kept: it goes into the call's receipt and log line, so an operator can
//! join an agent's trace with the audit log. A malformed value is ignored,
//! as the W3C recommendation says, and never fails a request.

/// A valid `traceparent`'s 32 lower-case hex digits of trace id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceId(String);

impl TraceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `version-traceid-parentid-flags`; a version above 00 may append
    /// fields after another `-` (forward compatibility); `ff` is invalid.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let value = value.trim_matches([' ', '\t']);
        let bytes = value.as_bytes();
        let hex = |range: std::ops::Range<usize>| {
            bytes
                .get(range)
                .is_some_and(|b| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        };
        let nonzero = |range: std::ops::Range<usize>| {
            bytes
                .get(range)
                .is_some_and(|b| b.iter().any(|&c| c != b'0'))
        };
        let version = value.get(0..2)?;
        let shape = hex(0..2)
            && version != "ff"
            && bytes.get(2) == Some(&b'-')
            && hex(3..35)
            && bytes.get(35) == Some(&b'-')
            && hex(36..52)
            && bytes.get(52) == Some(&b'-')
            && hex(53..55);
        let length = match version {
            "00" => bytes.len() == 55,
            _ => bytes.len() == 55 || bytes.get(55) == Some(&b'-'),
        };
        (shape && length && nonzero(3..35) && nonzero(36..52))
            .then(|| Self(value[3..35].to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_give_a_trace_id() {
        let id = |v: &str| TraceId::from_traceparent(v).map(|t| t.0);
        assert_eq!(
            id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A later version may carry more fields.
        assert!(id("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n\"forged\": 1",
        ] {
            assert_eq!(id(bad), None, "{bad:?}");
        }
    }
}
