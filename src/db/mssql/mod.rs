//! The SQL Server staging store and application target: T-SQL translation of filters, the
//! statements the store, the sync engine and the application writer issue, the connection
//! configuration and a bb8 pool of tiberius connections.

mod admin;
pub mod filter_sql;
pub mod migrate;
pub mod pool;
pub mod statements;
pub mod store;

pub use store::MssqlStore;
