//! ftrack entity records cached through layercache (feature `ftrack`).
//!
//! A thin module that instantiates the generic caches for ftrack's entity
//! records: a session whose cache is a [`Layered`](crate::Layered) stack
//! with a memory layer on top, a codec for persistent layers shared between
//! sessions, and a fixture server for tests and examples.

pub mod codec;
pub mod entity;
pub mod fixture;
mod query;
pub mod remote;
pub mod schema;
pub mod session;
pub mod value;

pub use codec::{EncodeStrategy, EntityCodec};
pub use entity::{Attribute, Entity, EntityKey};
pub use fixture::FixtureServer;
pub use remote::Remote;
pub use schema::Schema;
pub use session::{AutoPopulate, CacheMut, Session, SessionBuilder};
pub use value::Value;
