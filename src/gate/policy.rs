//! The one place that says what a call needs: which scope each class of
//! each tool requires, which classes need an explicit lease, and the quorum
//! rule for destructive calls. Tools only classify; they never name scopes.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, LeaseConfig, ScopeConfig};
use crate::gate::Class;
use crate::gate::quorum::{ApproverRegistry, QuorumRule};
use crate::gate::rate::CallLimits;

/// Lease, quorum, scope and rate policy, built once from the configuration.
pub struct Policy {
    scopes: BTreeMap<(String, Class), String>,
    explicit_leases: BTreeSet<(String, String)>,
    pub leases: LeaseConfig,
    pub approvers: ApproverRegistry,
    pub limits: CallLimits,
}

/// What each tool's classes need under `scopes`. A tool missing here can
/// be registered but never called: [`Policy::scope_for`] answers `None`
/// and the gate refuses (`no_policy`), so a forgotten line fails closed.
fn scope_table(scopes: &ScopeConfig) -> Vec<(&'static str, Class, &str)> {
    use Class::{Admin, Destructive, Read, Write};
    vec![
        ("db.query", Read, &scopes.db_read),
        ("db.query", Write, &scopes.db_write),
        ("db.query", Admin, &scopes.db_admin),
        ("db.query", Destructive, &scopes.db_admin),
        ("db.schema", Read, &scopes.db_read),
        ("terminal.execute", Write, &scopes.terminal_execute),
        ("terminal.execute", Destructive, &scopes.terminal_admin),
        ("passport.issue", Write, &scopes.passport_issue),
        ("audit.verify", Read, &scopes.audit_read),
        ("bench.echo", Read, "bench:echo"),
    ]
}

impl Policy {
    pub fn new(
        scopes: &ScopeConfig,
        leases: &LeaseConfig,
        approvers: ApproverRegistry,
        limits: CallLimits,
    ) -> Self {
        Self {
            scopes: scope_table(scopes)
                .into_iter()
                .map(|(tool, class, scope)| ((tool.to_string(), class), scope.to_string()))
                .collect(),
            explicit_leases: leases
                .explicit
                .iter()
                .filter_map(|entry| entry.split_once(':'))
                .map(|(tool, class)| (tool.to_string(), class.to_string()))
                .collect(),
            leases: leases.clone(),
            approvers,
            limits,
        }
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(
            &config.scopes,
            &config.leases,
            ApproverRegistry::new(&config.approvers, &config.quorum, &config.passkeys),
            CallLimits::new(&config.limits),
        )
    }

    /// The scope a call of `class` to `tool` needs; `None` when policy has
    /// no rule for it (the call is refused).
    pub fn scope_for(&self, tool: &str, class: Class) -> Option<&str> {
        self.scopes
            .get(&(tool.to_string(), class))
            .map(String::as_str)
    }

    /// The scopes of every class of `tool`, least powerful first: a caller
    /// holding none of them is refused before the tool sees the arguments.
    pub fn tool_scopes(&self, tool: &str) -> Vec<&str> {
        let mut scopes: Vec<&str> = Vec::new();
        for ((name, _), scope) in &self.scopes {
            if name == tool && !scopes.contains(&scope.as_str()) {
                scopes.push(scope);
            }
        }
        scopes
    }

    /// Whether configuration wants this class of call to `tool` leased
    /// explicitly (the first call returns a lease; the repeat runs).
    pub fn needs_explicit_lease(&self, tool: &str, class: Class) -> bool {
        self.explicit_leases
            .contains(&(tool.to_string(), class.as_str().to_string()))
    }

    /// Destructive calls wait for quorum; everything else runs on its lease.
    pub fn needs_quorum(&self, class: Class) -> bool {
        class == Class::Destructive
    }

    pub fn quorum_rule(&self, tool: &str) -> QuorumRule {
        self.approvers.rule_for(tool)
    }

    /// A rule for a tool outside the product: one in a unit test, or a
    /// conformance-suite fixture.
    #[cfg(any(test, feature = "conformance"))]
    pub(crate) fn with_scope(mut self, tool: &str, class: Class, scope: &str) -> Self {
        self.scopes
            .insert((tool.to_string(), class), scope.to_string());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitsConfig, QuorumConfig};

    fn policy(explicit: &[&str]) -> Policy {
        let leases = LeaseConfig {
            explicit: explicit.iter().map(|e| e.to_string()).collect(),
            ..LeaseConfig::default()
        };
        Policy::new(
            &ScopeConfig::default(),
            &leases,
            ApproverRegistry::new(
                &[],
                &QuorumConfig::default(),
                &crate::webauthn::RelyingParty::default(),
            ),
            CallLimits::new(&LimitsConfig::default()),
        )
    }

    #[test]
    fn every_class_of_every_tool_maps_to_its_configured_scope() {
        let policy = policy(&[]);
        assert_eq!(policy.scope_for("db.query", Class::Read), Some("db:read"));
        assert_eq!(
            policy.scope_for("db.query", Class::Destructive),
            Some("db:admin")
        );
        assert_eq!(
            policy.scope_for("terminal.execute", Class::Destructive),
            Some("terminal:admin")
        );
        assert_eq!(policy.scope_for("terminal.execute", Class::Read), None);
        assert_eq!(policy.scope_for("no.such.tool", Class::Read), None);
        assert_eq!(
            policy.tool_scopes("db.query"),
            ["db:read", "db:write", "db:admin"]
        );
        assert_eq!(
            policy.tool_scopes("terminal.execute"),
            ["terminal:execute", "terminal:admin"]
        );
        assert!(policy.tool_scopes("no.such.tool").is_empty());
    }

    #[test]
    fn explicit_leases_match_tool_and_class_exactly() {
        let policy = policy(&["db.query:write"]);
        assert!(policy.needs_explicit_lease("db.query", Class::Write));
        assert!(!policy.needs_explicit_lease("db.query", Class::Read));
        assert!(!policy.needs_explicit_lease("terminal.execute", Class::Write));
    }
}
