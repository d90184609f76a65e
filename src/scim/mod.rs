//! The SCIM protocol, pure: schemas and discovery documents, resource validation, the filter
//! grammar, the PATCH engine with Entra's dialect, attribute projection, and the SCIM error.
//! Nothing here does I/O.

pub mod entra;
pub mod error;
pub mod filter;
pub mod patch;
pub mod resource;
pub mod schema;

pub use error::{ScimError, ScimType};
