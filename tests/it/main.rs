//! Integration tests: the real application, in-process, on a temporary SQLite file and a free
//! port, driven over HTTP. Each test starts its own server (see `helpers::TestApp`).

mod helpers;

mod admin;
mod admin_story;
mod admin_sync;
mod app_target_mssql;
mod concurrency;
mod connections;
mod console;
mod discovery;
mod entra_examples;
mod errors;
mod etags;
mod fairness;
mod filters;
mod groups;
mod limits;
mod lists;
mod ops;
mod provisioning;
mod serve_crash;
mod storage_full;
mod store_conformance;
mod sync;
mod sync_cli;
mod sync_conformance;
mod sync_crash;
