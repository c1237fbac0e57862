//! [`Remote`]: the server a session talks to.

use std::fmt;

use crate::error::Result;

/// An ftrack server, or anything that answers like one: a batch of
/// operations in (ftrack's JSON API payload, one object per operation such
/// as `{"action": "query", "expression": "select name from Task"}`), one
/// result per operation out, in order.
///
/// A query's result is `{"action": "query", "data": [<entity records>],
/// "metadata": {...}}`. An entity record is a JSON object with
/// `"__entity_type__"`, its primary key attributes and the projected
/// attributes; a referenced entity is an object with `"__entity_type__"`
/// and its primary key (plus any projected attributes of it); a collection
/// is a list of such objects.
///
/// [`FixtureServer`](super::FixtureServer) implements it in memory for
/// tests and examples.
pub trait Remote: Send + Sync + fmt::Debug {
    /// Sends `operations` and returns one result per operation.
    ///
    /// # Errors
    ///
    /// [`Error::Query`](crate::Error::Query) for an expression the server
    /// does not understand; [`Error::Backend`](crate::Error::Backend) when
    /// the server cannot be reached or fails.
    fn call(&self, operations: &[serde_json::Value]) -> Result<Vec<serde_json::Value>>;
}

impl<R: Remote + ?Sized> Remote for std::sync::Arc<R> {
    fn call(&self, operations: &[serde_json::Value]) -> Result<Vec<serde_json::Value>> {
        (**self).call(operations)
    }
}
