//! The draining switch a node flips on its first stop signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Puts a node's front door into draining: new WHIP/WHEP sessions get 503
/// with `Retry-After` and `/healthz` answers 503, so load balancers stop
/// sending; open sessions (PATCH, DELETE, layer) carry on. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<AtomicBool>);

impl Drain {
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
