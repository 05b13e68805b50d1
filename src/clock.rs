//! The time the gate decides by: lease and approval expiry, a verified
//! caller's token expiry. The system clock in every build that serves; a
//! unit test can hold a manual clock and move it, so expiry is tested
//! without sleeping.

#[cfg(test)]
use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Default)]
pub struct Clock {
    #[cfg(test)]
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// Seconds since the Unix epoch.
    pub fn now_unix(&self) -> u64 {
        #[cfg(test)]
        if let Some(manual) = &self.manual {
            return manual.load(Ordering::SeqCst);
        }
        crate::now_unix()
    }

    /// A clock standing at `start` until moved.
    #[cfg(test)]
    pub fn manual(start: u64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicU64::new(start))),
        }
    }

    /// Moves a manual clock on (a system clock ignores it).
    #[cfg(test)]
    pub fn advance(&self, seconds: u64) {
        if let Some(manual) = &self.manual {
            manual.fetch_add(seconds, Ordering::SeqCst);
        }
    }
}
