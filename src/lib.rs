//! scim-bridge: a SCIM 2.0 server that stages what Microsoft Entra ID (or another identity
//! provider) provisions, and a sync engine that maps it into an application's database.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)]
#![deny(clippy::await_holding_lock)]

pub mod api;
pub mod app;
pub mod blocking;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod db;
pub mod mapping;
pub mod metrics;
pub mod provlog;
pub mod scim;
pub mod server;
pub mod store;
pub mod sync;
pub mod target;
