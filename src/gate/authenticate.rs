//! Step 1, identity: a verified token whose `jti` is not revoked.

use crate::identity::{IdentityError, Principal};

use super::Gate;
use super::admit::Preadmitted;

/// Proof that a token verified (signature, issuer, audience, times) and was
/// not revoked when checked. Only [`Gate::authenticate`] makes one.
#[derive(Debug, Clone)]
pub struct Authenticated {
    principal: Principal,
    /// Where the request came from, when a network transport knows.
    address: Option<std::net::IpAddr>,
}

impl Authenticated {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn address(&self) -> Option<std::net::IpAddr> {
        self.address
    }

    /// The same caller, known to have come from `address`.
    pub fn from_address(mut self, address: Option<std::net::IpAddr>) -> Self {
        self.address = address;
        self
    }

    /// A principal no token stands behind, for the benchmark's gate-off
    /// baseline only.
    #[cfg(feature = "bench")]
    pub(super) fn unchecked_for_benchmark() -> Self {
        Self {
            principal: Principal::unverified_for_benchmark(),
            address: None,
        }
    }
}

/// Who the transport says is calling.
pub enum Caller {
    /// A raw token (stdio: from the launching environment), verified per call.
    Token(Option<String>),
    /// Authenticated by the HTTP front door for this very request, with
    /// the admission its scope challenge already made, if it made one.
    Verified(Authenticated, Option<Preadmitted>),
}

impl Gate {
    /// Verifies a token and checks it against the revocation list.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Authenticated, IdentityError> {
        let principal = self.verifier.verify(token.unwrap_or_default()).await?;
        if let Some(jti) = principal.token_id() {
            match self.revocations.is_revoked(&self.store, jti).await {
                Ok(false) => {}
                Ok(true) => return Err(IdentityError::Revoked),
                // Fail closed: an unknown revocation state is not "not revoked".
                Err(_) => return Err(IdentityError::Unavailable),
            }
        }
        Ok(Authenticated {
            principal,
            address: None,
        })
    }

    pub(super) async fn identify(
        &self,
        caller: Caller,
    ) -> Result<(Authenticated, Option<Preadmitted>), IdentityError> {
        match caller {
            Caller::Token(token) => Ok((self.authenticate(token.as_deref()).await?, None)),
            // Checked for this very request; only the clock has moved since.
            Caller::Verified(authenticated, preadmitted) => {
                if authenticated.principal.expires_at() < self.clock.now_unix() {
                    return Err(IdentityError::Expired);
                }
                Ok((authenticated, preadmitted))
            }
        }
    }
}
