//! The SCIM protocol, pure: schemas and discovery documents, resource validation, the filter
//! grammar, the PATCH engine with Entra's dialect, attribute projection, the SCIM error, and
//! the bounds on what one request may ask for. Nothing here does I/O.

pub mod entra;
pub mod error;
pub mod filter;
pub mod limits;
pub mod patch;
pub mod resource;
pub mod schema;
mod work;

pub use error::{ScimError, ScimType};
pub use limits::Limits;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod proptests;
