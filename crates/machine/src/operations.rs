//! Operations: every call gets an id (the `opid` header), running calls are
//! listed by `GetOperations`, and `CancelOperation` cancels one.
//!
//! ```
//! use tether_machine::operations::Operations;
//! let ops = Operations::default();
//! let op = ops.register(None, "/viam.component.motor.v1.MotorService/GoFor".into(), None);
//! assert_eq!(ops.list().len(), 1);
//! assert!(ops.cancel(&op.id().to_string()));
//! assert!(op.cancel_token().is_cancelled());
//! drop(op);
//! assert!(ops.list().is_empty());
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A snapshot of one running operation.
#[derive(Clone, Debug)]
pub struct OperationInfo {
    /// Operation id.
    pub id: Uuid,
    /// Full gRPC method path.
    pub method: String,
    /// When it started.
    pub started: SystemTime,
    /// The session the call was bound to.
    pub session: Option<Uuid>,
}

struct Entry {
    info: OperationInfo,
    cancel: CancellationToken,
    done: CancellationToken,
}

/// The registry of running operations.
#[derive(Clone, Default)]
pub struct Operations {
    map: Arc<Mutex<HashMap<Uuid, Entry>>>,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operations").field("running", &self.map.lock().len()).finish()
    }
}

/// A registered operation; removed from the registry when dropped.
#[derive(Debug)]
pub struct OperationGuard {
    id: Uuid,
    cancel: CancellationToken,
    done: CancellationToken,
    ops: Operations,
}

impl OperationGuard {
    /// The operation id.
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// Cancelled by `CancelOperation` (or `StopAll`).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        self.ops.map.lock().remove(&self.id);
        self.done.cancel();
    }
}

impl Operations {
    /// Registers a call. `id` is the client's `opid` if it sent a valid,
    /// unused one; otherwise a new id is generated.
    pub fn register(&self, id: Option<Uuid>, method: String, session: Option<Uuid>) -> OperationGuard {
        let mut map = self.map.lock();
        let mut id = id.filter(|id| !map.contains_key(id)).unwrap_or_else(Uuid::new_v4);
        while map.contains_key(&id) {
            id = Uuid::new_v4();
        }
        let cancel = CancellationToken::new();
        let done = CancellationToken::new();
        let info = OperationInfo { id, method, started: SystemTime::now(), session };
        map.insert(id, Entry { info, cancel: cancel.clone(), done: done.clone() });
        OperationGuard { id, cancel, done, ops: self.clone() }
    }

    /// Running operations, oldest first.
    pub fn list(&self) -> Vec<OperationInfo> {
        let mut v: Vec<_> = self.map.lock().values().map(|e| e.info.clone()).collect();
        v.sort_by_key(|o| o.started);
        v
    }

    /// Cancels an operation; false when the id is unknown (not an error).
    pub fn cancel(&self, id: &str) -> bool {
        let Ok(id) = Uuid::parse_str(id) else {
            return false;
        };
        match self.map.lock().get(&id) {
            Some(e) => {
                e.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every operation except `except`.
    pub fn cancel_all_except(&self, except: Option<Uuid>) {
        for (id, e) in self.map.lock().iter() {
            if Some(*id) != except {
                e.cancel.cancel();
            }
        }
    }

    /// Waits until the operation is gone (returns at once for unknown ids).
    pub async fn wait(&self, id: &str) {
        let Ok(id) = Uuid::parse_str(id) else { return };
        let done = match self.map.lock().get(&id) {
            Some(e) => e.done.clone(),
            None => return,
        };
        done.cancelled().await;
    }
}
