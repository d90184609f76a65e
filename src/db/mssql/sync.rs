//! The sync engine's state on SQL Server staging (schema `sync`, users in `scim`), with its
//! T-SQL here. A change batch is read in two statements and recorded in a handful of
//! set-based ones (rows travel as one JSON parameter each), not one per user. Every call that
//! writes is one transaction on one pooled connection; a lifecycle batch reads its due users
//! locked, is planned, and is recorded in that same transaction.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Value, json};
use tiberius::{Query, Row};

use super::MssqlStaging;
use super::pool::{Client, transaction};
use super::rows::{
    SqlError, bit, execute, first, int, naive, opt_int, opt_text, opt_utc, rows, scalar, text, utc,
};
use super::scim::remove_from_all_groups;
use super::seq;
use crate::store::format_time;
use crate::sync::plan::Planned;
use crate::sync::store::{
    BatchPlanner, BeginRun, Begun, DueBatch, DueQuery, FinishRun, Heartbeat, LeaseRow,
    LifecycleDone, LifecyclePlanner, LifecycleRecord, Link, LinkWrite, Mark, Owned, PruneRuns,
    Queued, Read, Record, RetryWrite, RowsOf, RunState, RunningRun, SyncStore, UserRow, item_json,
};
use crate::sync::{Counts, ItemReport, RunStatus, SyncError};

// ---- reading staging ------------------------------------------------------------------------

/// pk, id, user_name, doc, active, deleted, change_seq, groups (JSON array of
/// {"id", "display_name", "external_id"}, absent keys for NULL), quarantined (its retry row is
/// quarantined at this very version).
const SYNC_USER_COLUMNS: &str = "u.pk, u.id, u.user_name, u.doc, u.active, \
     CAST(CASE WHEN u.deleted_at IS NULL THEN 0 ELSE 1 END AS BIT) AS deleted, u.change_seq, \
     ISNULL((SELECT g.id AS id, g.display_name AS display_name, g.external_id AS external_id \
     FROM scim.group_members m JOIN scim.groups g ON g.tenant = m.tenant AND g.id = m.group_id \
     WHERE m.tenant = u.tenant AND m.member_id = u.id FOR JSON PATH), N'[]') AS groups, \
     CAST(CASE WHEN EXISTS (SELECT 1 FROM sync.retry q WHERE q.tenant = u.tenant \
     AND q.user_id = u.id AND q.quarantined_at IS NOT NULL AND q.change_seq = u.change_seq) \
     THEN 1 ELSE 0 END AS BIT) AS quarantined";

/// Users changed after (@P2 seq, @P3 pk) and at or before @P4 (from
/// [`super::seq::high_seq`]), in change order: @P1 tenant, @P5 limit.
static CHANGED_USERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT TOP (@P5) {SYNC_USER_COLUMNS} FROM scim.users u WHERE u.tenant = @P1 \
         AND (u.change_seq > @P2 OR (u.change_seq = @P2 AND u.pk > @P3)) AND u.change_seq <= @P4 \
         ORDER BY u.change_seq, u.pk"
    )
});

/// @P1 tenant, @P2 seq, @P3 pk, @P4 high.
const COUNT_CHANGED: &str = "SELECT COUNT_BIG(*) FROM scim.users u WHERE u.tenant = @P1 \
     AND (u.change_seq > @P2 OR (u.change_seq = @P2 AND u.pk > @P3)) AND u.change_seq <= @P4";

/// Users to retry that the watermark (@P2 seq, @P3 pk) has passed, after pk @P4, quarantined
/// ones left out: @P1 tenant, @P5 limit.
static RETRY_USERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT TOP (@P5) {SYNC_USER_COLUMNS} FROM sync.retry x \
         JOIN scim.users u ON u.tenant = x.tenant AND u.id = x.user_id \
         WHERE x.tenant = @P1 AND x.quarantined_at IS NULL \
         AND (u.change_seq < @P2 OR (u.change_seq = @P2 AND u.pk <= @P3)) \
         AND u.pk > @P4 ORDER BY u.pk"
    )
});

/// Users whose retention ended: inactive since before @P2 and, when deleted, deleted before it.
const DUE: &str = "u.tenant = @P1 AND u.deactivated_at IS NOT NULL AND u.deactivated_at <= @P2 \
     AND (u.deleted_at IS NULL OR u.deleted_at <= @P2)";

/// Count of due users: @P1 tenant, @P2 cutoff, and with `held` @P3 the run that held them.
fn count_due(held: bool) -> String {
    let (join, cond) = held_join(held);
    format!("SELECT COUNT_BIG(*) FROM scim.users u{join} WHERE {DUE}{cond}")
}

/// Due users by pk, locked until the lifecycle batch's transaction ends: @P1 tenant, @P2
/// cutoff, @P3 after pk, @P4 limit, and with `held` @P5 the run. UPDLOCK holds the rows read,
/// so a SCIM write to one of them (a reactivation) waits for the purge and then finds the
/// user gone, instead of coming between the read and the purge. No HOLDLOCK: a user that
/// becomes due after the read is left to a later batch or run, and range locks would hold up
/// other writes to users (deactivations; on a scan of the clustered index, new users) until
/// the batch commits.
fn due_users(held: bool) -> String {
    let (join, cond) = held_join(held);
    let join = join.replace("@P3", "@P5");
    format!(
        "SELECT TOP (@P4) {SYNC_USER_COLUMNS} FROM scim.users u WITH (UPDLOCK, ROWLOCK){join} \
         WHERE {DUE}{cond} AND u.pk > @P3 ORDER BY u.pk"
    )
}

fn held_join(held: bool) -> (&'static str, &'static str) {
    if held {
        (
            " JOIN sync.run_items i ON i.run_id = @P3 AND i.user_id = u.id",
            " AND i.outcome = N'offboarding_held'",
        )
    } else {
        ("", "")
    }
}

/// Purge a user from staging (memberships first; emails go by cascade): @P1 tenant, @P2 id.
const PURGE_USER: &str = "DELETE FROM scim.users WHERE tenant = @P1 AND id = @P2";

/// @P1 tenant, @P2 member id.
const COUNT_MEMBERSHIPS: &str =
    "SELECT COUNT_BIG(*) FROM scim.group_members WHERE tenant = @P1 AND member_id = @P2";

// ---- state ---------------------------------------------------------------------------------

/// @P1 tenant, @P2 JSON array of user ids.
const LINKS_FOR_USERS: &str = "SELECT l.user_id, l.app_key, l.fingerprint, l.applied_roles, l.fields, l.state \
     FROM sync.links l WHERE l.tenant = @P1 AND l.user_id IN \
     (SELECT j.value COLLATE Latin1_General_100_BIN2 FROM OPENJSON(@P2) j)";

/// @P1 tenant.
const COUNT_LINKS: &str = "SELECT COUNT_BIG(*) FROM sync.links WHERE tenant = @P1";

/// For each of the keys in @P2 (a JSON array), how many links of tenant @P1 have it: app_key,
/// count. A key no link has is left out.
const KEY_LINKS: &str = "SELECT l.app_key, COUNT_BIG(*) FROM sync.links l WHERE l.tenant = @P1 \
     AND l.app_key IN (SELECT j.value COLLATE Latin1_General_100_BIN2 FROM OPENJSON(@P2) j) \
     GROUP BY l.app_key";

/// A batch's link writes as rows: @P2 is a JSON array of objects with user_id, app_key,
/// fingerprint, applied_roles and fields (JSON text), state.
const LINK_ROWS: &str = "OPENJSON(@P2) WITH (user_id NVARCHAR(64) '$.user_id', \
     app_key NVARCHAR(450) '$.app_key', fingerprint NVARCHAR(128) '$.fingerprint', \
     applied_roles NVARCHAR(MAX) '$.applied_roles', fields NVARCHAR(MAX) '$.fields', \
     state NVARCHAR(16) '$.state') j";

/// Insert or replace a batch's links in two statements: @P1 tenant, @P2 the rows (see
/// LINK_ROWS), @P3 now. The hints lock the keys (and the gaps of the new ones) until the
/// transaction ends.
static UPSERT_LINKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE l SET app_key = j.app_key, fingerprint = j.fingerprint, applied_roles = j.applied_roles, \
         fields = j.fields, state = j.state, updated_at = @P3 \
         FROM sync.links l WITH (UPDLOCK, HOLDLOCK) JOIN {LINK_ROWS} \
         ON l.user_id = j.user_id COLLATE Latin1_General_100_BIN2 WHERE l.tenant = @P1; \
         INSERT INTO sync.links (tenant, user_id, app_key, fingerprint, applied_roles, fields, state, updated_at) \
         SELECT @P1, j.user_id, j.app_key, j.fingerprint, j.applied_roles, j.fields, j.state, @P3 \
         FROM {LINK_ROWS} WHERE NOT EXISTS (SELECT 1 FROM sync.links l WITH (UPDLOCK, HOLDLOCK) \
         WHERE l.tenant = @P1 AND l.user_id = j.user_id COLLATE Latin1_General_100_BIN2)"
    )
});

/// @P1 tenant, @P2 user id.
const DELETE_LINK: &str = "DELETE FROM sync.links WHERE tenant = @P1 AND user_id = @P2";

/// (change_seq, last_pk) of the tenant: @P1 tenant.
const GET_WATERMARK: &str = "SELECT change_seq, last_pk FROM sync.watermarks WHERE tenant = @P1";

/// Move the watermark forward to (@P2 seq, @P3 pk), never back: @P1 tenant, @P4 now.
/// (Upserts here are UPDATE … WITH (UPDLOCK, HOLDLOCK) then INSERT: the hints lock the key, or
/// the gap where it would go, until the transaction ends, so concurrent upserts of one key
/// serialise into one insert and updates. MERGE would do the same with more known defects.)
const ADVANCE_WATERMARK: &str = "UPDATE sync.watermarks WITH (UPDLOCK, HOLDLOCK) \
     SET change_seq = @P2, last_pk = @P3, updated_at = @P4 \
     WHERE tenant = @P1 AND (@P2 > change_seq OR (@P2 = change_seq AND @P3 > last_pk)); \
     IF @@ROWCOUNT = 0 INSERT INTO sync.watermarks (tenant, change_seq, last_pk, updated_at) \
     SELECT @P1, @P2, @P3, @P4 WHERE NOT EXISTS \
     (SELECT 1 FROM sync.watermarks WITH (UPDLOCK, HOLDLOCK) WHERE tenant = @P1)";

/// A batch's failed users as rows: @P2 is a JSON array of {"user_id", "error", "change_seq"}.
const RETRY_ROWS: &str = "OPENJSON(@P2) WITH (user_id NVARCHAR(64) '$.user_id', \
     error NVARCHAR(MAX) '$.error', change_seq BIGINT '$.change_seq') j";

/// Attempts after this failure: one more on the same staged version, else the first (a NULL
/// change_seq, from before versions were recorded, never matches).
const NEXT_ATTEMPT: &str = "CASE WHEN x.change_seq = j.change_seq THEN x.attempts + 1 ELSE 1 END";

/// Record a batch's failed users: @P1 tenant, @P2 the rows (see RETRY_ROWS), @P3 now, @P4
/// quarantine_after. A user is quarantined once it failed @P4 runs in a row on one staged
/// version (0: never), keeping the time it was first quarantined; SQLite's ADD_RETRY, set-based.
/// SET expressions all read the row as it was before the update.
static UPSERT_RETRIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE x SET attempts = {NEXT_ATTEMPT}, \
         first_failed_at = CASE WHEN x.change_seq = j.change_seq THEN x.first_failed_at ELSE @P3 END, \
         quarantined_at = CASE WHEN @P4 > 0 AND {NEXT_ATTEMPT} >= @P4 \
         THEN ISNULL(x.quarantined_at, @P3) END, \
         change_seq = j.change_seq, last_error = j.error, last_failed_at = @P3 \
         FROM sync.retry x WITH (UPDLOCK, HOLDLOCK) JOIN {RETRY_ROWS} \
         ON x.user_id = j.user_id COLLATE Latin1_General_100_BIN2 WHERE x.tenant = @P1; \
         INSERT INTO sync.retry (tenant, user_id, attempts, last_error, first_failed_at, last_failed_at, \
         change_seq, quarantined_at) \
         SELECT @P1, j.user_id, 1, j.error, @P3, @P3, j.change_seq, CASE WHEN @P4 = 1 THEN @P3 END \
         FROM {RETRY_ROWS} \
         WHERE NOT EXISTS (SELECT 1 FROM sync.retry x WITH (UPDLOCK, HOLDLOCK) \
         WHERE x.tenant = @P1 AND x.user_id = j.user_id COLLATE Latin1_General_100_BIN2)"
    )
});

/// @P1 tenant.
pub(super) const COUNT_QUARANTINED: &str =
    "SELECT COUNT_BIG(*) FROM sync.retry WHERE tenant = @P1 AND quarantined_at IS NOT NULL";

/// Release a quarantined user; the next run retries it (its next failure counts from one):
/// @P1 tenant, @P2 user id. No row: it was not quarantined.
const RELEASE_QUARANTINE: &str = "UPDATE sync.retry SET quarantined_at = NULL, attempts = 0 \
     WHERE tenant = @P1 AND user_id = @P2 AND quarantined_at IS NOT NULL";

/// Retry rows of users no longer in staging: @P1 tenant.
const DROP_ORPHAN_RETRIES: &str = "DELETE FROM sync.retry WHERE tenant = @P1 \
     AND user_id NOT IN (SELECT id FROM scim.users WHERE tenant = @P1)";

/// @P1 tenant, @P2 JSON array of user ids.
const CLEAR_RETRIES: &str = "DELETE FROM sync.retry WHERE tenant = @P1 AND user_id IN \
     (SELECT j.value COLLATE Latin1_General_100_BIN2 FROM OPENJSON(@P2) j)";

/// @P1 tenant, @P2 user id.
const DELETE_RETRY: &str = "DELETE FROM sync.retry WHERE tenant = @P1 AND user_id = @P2";

// ---- lease ---------------------------------------------------------------------------------

/// Take the tenant's lease when it is free, expired, or held by @P5 (NULL or a holder whose
/// process stopped): @P1 tenant, @P2 holder, @P3 now, @P4 expires. Returns one row, `taken`
/// (BIT). The UPDLOCK/HOLDLOCK hints lock the key range, so two processes racing for a free
/// tenant give one insert and one no-op.
const ACQUIRE_LEASE: &str = "DECLARE @taken INT; \
     UPDATE sync.leases WITH (UPDLOCK, HOLDLOCK) SET holder = @P2, acquired_at = @P3, expires_at = @P4, run_id = NULL \
     WHERE tenant = @P1 AND (expires_at <= @P3 OR holder = @P5); \
     SET @taken = @@ROWCOUNT; \
     IF @taken = 0 BEGIN \
     INSERT INTO sync.leases (tenant, holder, acquired_at, expires_at) SELECT @P1, @P2, @P3, @P4 \
     WHERE NOT EXISTS (SELECT 1 FROM sync.leases WITH (UPDLOCK, HOLDLOCK) WHERE tenant = @P1); \
     SET @taken = @@ROWCOUNT; \
     END; \
     SELECT CAST(@taken AS BIT) AS taken";

/// Extend the lease: @P1 expires, @P2 tenant, @P3 holder. No row: the lease was lost.
const RENEW_LEASE: &str =
    "UPDATE sync.leases SET expires_at = @P1 WHERE tenant = @P2 AND holder = @P3";

/// @P1 run id, @P2 tenant, @P3 holder.
const LEASE_RUN: &str = "UPDATE sync.leases SET run_id = @P1 WHERE tenant = @P2 AND holder = @P3";

/// @P1 tenant, @P2 holder.
const RELEASE_LEASE: &str = "DELETE FROM sync.leases WHERE tenant = @P1 AND holder = @P2";

/// The tenant's lease as stored, expired or not: @P1 tenant.
const LEASE_ROW: &str =
    "SELECT holder, run_id, acquired_at, expires_at FROM sync.leases WHERE tenant = @P1";

/// An operator's release: the tenant's lease, whoever holds it, answering the lease it
/// deleted (no row: there was none) in the same statement: @P1 tenant.
const DROP_LEASE: &str = "DELETE FROM sync.leases \
     OUTPUT deleted.holder, deleted.run_id, deleted.acquired_at, deleted.expires_at \
     WHERE tenant = @P1";

/// An operator's action on the sync side: @P1 at, @P2 tenant, @P3 actor, @P4 action, @P5
/// detail (JSON).
const INSERT_AUDIT: &str = "INSERT INTO sync.audit ([at], tenant, actor, action, detail) \
     VALUES (@P1, @P2, @P3, @P4, @P5)";

// ---- owners of application rows ----------------------------------------------------------

/// The owners of the keys in @P4 (a JSON array) among the rows of application @P1, table @P2,
/// scope @P3: app_key, tenant. A key nobody owns is left out.
const OWNERS: &str = "SELECT o.app_key, o.tenant FROM sync.owners o \
     WHERE o.application = @P1 AND o.app_table = @P2 AND o.scope = @P3 \
     AND o.app_key IN (SELECT j.value COLLATE Latin1_General_100_BIN2 FROM OPENJSON(@P4) j)";

/// Rows a tenant owns as rows: @P5 is a JSON array of {"app_key", "user_id", "how"}, one per
/// key (see [`owner_rows`]).
const OWNER_ROWS: &str = "OPENJSON(@P5) WITH (app_key NVARCHAR(450) '$.app_key', \
     user_id NVARCHAR(64) '$.user_id', how NVARCHAR(16) '$.how') j";

/// Record the rows tenant @P4 owns in application @P1, table @P2, scope @P3 (@P5 the rows, @P6
/// now): a row it owns already gets the user it was last written for; a row nobody owns is
/// inserted; a row another tenant owns keeps its owner (SQLite's upsert `WHERE tenant =
/// excluded.tenant`). The hints lock the keys, or the gaps of new ones, until the transaction
/// ends, so of two tenants claiming one key together the second finds the first's row.
static OWN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE o SET user_id = j.user_id, [at] = @P6 \
         FROM sync.owners o WITH (UPDLOCK, HOLDLOCK) JOIN {OWNER_ROWS} \
         ON o.app_key = j.app_key COLLATE Latin1_General_100_BIN2 \
         WHERE o.application = @P1 AND o.app_table = @P2 AND o.scope = @P3 AND o.tenant = @P4; \
         INSERT INTO sync.owners (application, app_table, scope, app_key, tenant, user_id, how, [at]) \
         SELECT @P1, @P2, @P3, j.app_key, @P4, j.user_id, j.how, @P6 FROM {OWNER_ROWS} \
         WHERE NOT EXISTS (SELECT 1 FROM sync.owners o WITH (UPDLOCK, HOLDLOCK) \
         WHERE o.application = @P1 AND o.app_table = @P2 AND o.scope = @P3 \
         AND o.app_key = j.app_key COLLATE Latin1_General_100_BIN2)"
    )
});

/// Forget the rows of the keys in @P5 (a JSON array) that tenant @P4 owns in application @P1,
/// table @P2, scope @P3; another tenant's stay.
const DISOWN: &str = "DELETE FROM sync.owners \
     WHERE application = @P1 AND app_table = @P2 AND scope = @P3 AND tenant = @P4 \
     AND app_key IN (SELECT j.value COLLATE Latin1_General_100_BIN2 FROM OPENJSON(@P5) j)";

/// The tenant's links by user id after @P2, @P3 at most: @P1 tenant. user_id, then the
/// link's columns as LINKS_FOR_USERS reads them.
const LINKS_PAGE: &str = "SELECT TOP (@P3) user_id, app_key, fingerprint, applied_roles, fields, state \
     FROM sync.links WHERE tenant = @P1 AND user_id > @P2 ORDER BY user_id";

// ---- ledger --------------------------------------------------------------------------------

/// @P1 tenant, @P2 trigger, @P3 dry_run, @P4 full, @P5 status, @P6 started_at (also the first
/// heartbeat), @P7 ended_at, @P8 watermark_from, @P9 approves_run, @P10 holder. Returns id.
const INSERT_RUN: &str = "INSERT INTO sync.runs (tenant, [trigger], dry_run, [full], status, started_at, ended_at, \
     watermark_from, approves_run, holder, heartbeat_at) OUTPUT inserted.id \
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P6)";

/// A run's last sign of life: @P1 now, @P2 id.
const HEARTBEAT_RUN: &str = "UPDATE sync.runs SET heartbeat_at = @P1 WHERE id = @P2";

/// Runs still recorded as running, of tenant @P1 (`one`) or of every tenant: id, tenant,
/// holder, heartbeat_at, started_at, dry_run. Two texts rather than `@P1 IS NULL OR`, so the
/// one-tenant form seeks runs_status.
fn running_runs_sql(one: bool) -> String {
    format!(
        "SELECT id, tenant, holder, heartbeat_at, started_at, dry_run FROM sync.runs \
         WHERE {}status = N'running' ORDER BY id",
        if one { "tenant = @P1 AND " } else { "" }
    )
}

/// Close the runs in @P3 (a JSON array of ids) that are still running, as failed: @P1 now,
/// @P2 the reason.
const CLOSE_RUNS: &str = "UPDATE sync.runs SET status = N'failed', ended_at = @P1, error = @P2 \
     WHERE status = N'running' AND id IN (SELECT CAST(j.value AS BIGINT) FROM OPENJSON(@P3) j)";

/// Runs left running by a holder that stopped: @P1 now, @P2 tenant.
const ABANDON_STALE_RUNS: &str = "UPDATE sync.runs SET status = N'failed', ended_at = @P1, \
     error = N'abandoned: the process running it stopped before it finished' \
     WHERE tenant = @P2 AND status = N'running' AND dry_run = 0";

/// @P1 status, @P2 ended_at, @P3…@P11 created, updated, unchanged, roles_added, roles_removed,
/// deactivated, offboarded, failed, quarantined, @P12 watermark_to, @P13 error, @P14 id.
const UPDATE_RUN: &str = "UPDATE sync.runs SET status = @P1, ended_at = @P2, created = @P3, updated = @P4, \
     unchanged = @P5, roles_added = @P6, roles_removed = @P7, deactivated = @P8, offboarded = @P9, \
     failed = @P10, quarantined = @P11, watermark_to = @P12, error = @P13 WHERE id = @P14";

/// @P1 id.
const GET_RUN: &str = "SELECT tenant, status, dry_run, approved_at FROM sync.runs WHERE id = @P1";

/// Mark an awaiting_approval run approved: @P1 approved_at, @P2 approving run, @P3 approver,
/// @P4 id; no row when it is not awaiting approval or was approved already.
const APPROVE_RUN: &str = "UPDATE sync.runs SET status = N'approved', approved_at = @P1, approved_by = @P2, \
     approver = @P3 WHERE id = @P4 AND status = N'awaiting_approval' AND approved_at IS NULL AND dry_run = 0";

/// Runs pruned per transaction.
const PRUNE_BATCH: i64 = 500;

/// The runs retention deletes (see `PruneRuns`), oldest first: @P1 before, @P2 noop_before,
/// @P3 limit, @P4 tenant (NULL: every tenant). Never a running or awaiting_approval run, nor the newest run of its tenant. A
/// no-op run has no item, did not fail and is no part of an approval.
const PRUNABLE_RUNS: &str = "SELECT TOP (@P3) r.id FROM sync.runs r \
     WHERE r.status NOT IN (N'running', N'awaiting_approval') \
     AND r.id < (SELECT MAX(n.id) FROM sync.runs n WHERE n.tenant = r.tenant) \
     AND (r.started_at < @P1 OR (r.started_at < @P2 AND r.status IN (N'succeeded', N'skipped') \
         AND r.approves_run IS NULL AND r.approved_at IS NULL \
         AND NOT EXISTS (SELECT 1 FROM sync.run_items i WHERE i.run_id = r.id))) \
     AND (@P4 IS NULL OR r.tenant = @P4) \
     ORDER BY r.id";

/// Delete the runs of @P1 (a JSON array of ids) with their items; runs kept that point at them
/// (an approval and the run it approved) let go of the reference first.
const PRUNE_RUNS: &str = "UPDATE sync.runs SET approves_run = NULL WHERE approves_run IN \
     (SELECT CAST([value] AS BIGINT) FROM OPENJSON(@P1)); \
     UPDATE sync.runs SET approved_by = NULL WHERE approved_by IN \
     (SELECT CAST([value] AS BIGINT) FROM OPENJSON(@P1)); \
     DELETE FROM sync.run_items WHERE run_id IN (SELECT CAST([value] AS BIGINT) FROM OPENJSON(@P1)); \
     DELETE FROM sync.runs WHERE id IN (SELECT CAST([value] AS BIGINT) FROM OPENJSON(@P1))";

/// A batch's ledger items in one statement, ids in array order: @P1 run id, @P2 a JSON array
/// of objects with user_id, user_name, app_key, outcome, changes, roles_added, roles_removed
/// (JSON text or null) and error.
const INSERT_RUN_ITEMS: &str = "INSERT INTO sync.run_items (run_id, user_id, user_name, app_key, outcome, changes, \
     roles_added, roles_removed, error, action) \
     SELECT @P1, j.user_id, j.user_name, j.app_key, j.outcome, j.changes, j.roles_added, j.roles_removed, j.error, \
     j.action \
     FROM OPENJSON(@P2) a CROSS APPLY OPENJSON(a.value) WITH (user_id NVARCHAR(64) '$.user_id', \
     user_name NVARCHAR(256) '$.user_name', app_key NVARCHAR(450) '$.app_key', outcome NVARCHAR(32) '$.outcome', \
     changes NVARCHAR(MAX) '$.changes', roles_added NVARCHAR(MAX) '$.roles_added', \
     roles_removed NVARCHAR(MAX) '$.roles_removed', error NVARCHAR(MAX) '$.error', \
     action NVARCHAR(16) '$.action') j \
     ORDER BY CAST(a.[key] AS INT)";

// ---- offboarding queue ----------------------------------------------------------------------

/// Queue an offboarding unless one is queued for the user: @P1 tenant, @P2 user id,
/// @P3 user name, @P4 app key, @P5 action (JSON), @P6 roles (JSON), @P7 now, @P8 run id.
const QUEUE_OFFBOARDING: &str = "INSERT INTO sync.offboarding (tenant, user_id, user_name, app_key, action, roles, queued_at, run_id) \
     SELECT @P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8 WHERE NOT EXISTS \
     (SELECT 1 FROM sync.offboarding WITH (UPDLOCK, HOLDLOCK) WHERE tenant = @P1 AND user_id = @P2)";

/// @P1 tenant, @P2 after id, @P3 limit; with the fields the user's link last applied.
const PENDING_OFFBOARDINGS: &str = "SELECT TOP (@P3) o.id, o.user_id, o.user_name, o.app_key, o.action, o.roles, \
     l.fields FROM sync.offboarding o LEFT JOIN sync.links l ON l.tenant = o.tenant AND l.user_id = o.user_id \
     WHERE o.tenant = @P1 AND o.id > @P2 ORDER BY o.id";

/// @P1 id.
const DELETE_OFFBOARDING: &str = "DELETE FROM sync.offboarding WHERE id = @P1";

/// @P1 error, @P2 id.
const OFFBOARDING_FAILED: &str =
    "UPDATE sync.offboarding SET attempts = attempts + 1, last_error = @P1 WHERE id = @P2";

// ---- reading rows -------------------------------------------------------------------------

/// pk, id, user_name, doc, active, deleted, change_seq, groups, quarantined (see
/// SYNC_USER_COLUMNS).
fn user_row(r: &Row) -> Result<UserRow, SqlError> {
    Ok(UserRow {
        pk: int(r, 0)?,
        id: text(r, 1)?,
        user_name: text(r, 2)?,
        doc: text(r, 3)?,
        active: bit(r, 4)?,
        deleted: bit(r, 5)?,
        change_seq: int(r, 6)?,
        groups: opt_text(r, 7)?,
        quarantined: bit(r, 8)?,
    })
}

fn user_rows(rows: Vec<Row>) -> Result<Vec<UserRow>, SqlError> {
    rows.iter().map(user_row).collect()
}

/// The links of `users` (one statement).
async fn links(
    c: &mut Client,
    tenant: &str,
    users: &[UserRow],
) -> Result<HashMap<String, Link>, SyncError> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let mut q = Query::new(LINKS_FOR_USERS);
    q.bind(tenant.to_string());
    q.bind(serde_json::to_string(&ids)?);
    rows(c, q).await?.iter().map(user_link).collect()
}

/// user_id, app_key, fingerprint, applied_roles, fields, state (LINKS_FOR_USERS, LINKS_PAGE).
fn user_link(r: &Row) -> Result<(String, Link), SyncError> {
    Ok((
        text(r, 0)?,
        Link::parse(
            text(r, 1)?,
            text(r, 2)?,
            &text(r, 3)?,
            &text(r, 4)?,
            text(r, 5)?,
        )?,
    ))
}

/// For each of `links`' keys, how many links of the tenant have it (one statement).
async fn key_links(
    c: &mut Client,
    tenant: &str,
    links: &HashMap<String, Link>,
) -> Result<HashMap<String, i64>, SyncError> {
    if links.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<&str> = links.values().map(|l| l.app_key.as_str()).collect();
    let mut q = Query::new(KEY_LINKS);
    q.bind(tenant.to_string());
    q.bind(serde_json::to_string(&keys)?);
    rows(c, q)
        .await?
        .iter()
        .map(|r| Ok((text(r, 0)?, int(r, 1)?)))
        .collect()
}

/// Users changed after a mark, or users to retry, by the read's statement.
fn read_query(tenant: &str, read: Read, limit: u32) -> Query<'static> {
    let mut q = match read {
        Read::Changed { .. } => Query::new(CHANGED_USERS.as_str()),
        Read::Retry { .. } => Query::new(RETRY_USERS.as_str()),
    };
    q.bind(tenant.to_string());
    match read {
        Read::Changed { after, high } => {
            q.bind(after.seq);
            q.bind(after.pk);
            q.bind(high);
        }
        Read::Retry {
            watermark,
            after_pk,
        } => {
            q.bind(watermark.seq);
            q.bind(watermark.pk);
            q.bind(after_pk);
        }
    }
    q.bind(i64::from(limit));
    q
}

/// Run a planner off the async runtime: rendering a batch is CPU work.
async fn plan_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
}

// ---- the JSON rows of a batch -------------------------------------------------------------

/// The JSON rows of a batch's ledger items (see INSERT_RUN_ITEMS).
fn items_json(items: &[ItemReport]) -> Result<String, SyncError> {
    let rows = items
        .iter()
        .map(|item| {
            let j = item_json(item)?;
            Ok(json!({
                "user_id": item.user_id,
                "user_name": item.user_name,
                "app_key": item.app_key,
                "outcome": item.outcome.as_str(),
                "changes": j.changes,
                "roles_added": j.roles_added,
                "roles_removed": j.roles_removed,
                "error": item.error,
                "action": item.action,
            }))
        })
        .collect::<Result<Vec<Value>, SyncError>>()?;
    Ok(Value::Array(rows).to_string())
}

/// The JSON rows of a batch's links (see UPSERT_LINKS).
fn links_json(links: &[LinkWrite]) -> Result<String, SyncError> {
    let rows = links
        .iter()
        .map(|l| {
            Ok(json!({
                "user_id": l.user_id,
                "app_key": l.app_key,
                "fingerprint": l.fingerprint,
                // JSON text: the columns hold it as NVARCHAR(MAX).
                "applied_roles": serde_json::to_string(&l.applied_roles)?,
                "fields": serde_json::to_string(&l.fields)?,
                "state": l.state,
            }))
        })
        .collect::<Result<Vec<Value>, SyncError>>()?;
    Ok(Value::Array(rows).to_string())
}

/// The JSON rows of a batch's failed users (see UPSERT_RETRIES).
fn retries_json(retries: &[RetryWrite]) -> String {
    let rows: Vec<Value> = retries
        .iter()
        .map(|f| json!({"user_id": f.user_id, "error": f.error, "change_seq": f.change_seq}))
        .collect();
    Value::Array(rows).to_string()
}

/// The JSON rows of the rows a tenant owns (see OWN): one per key, as SQLite's row-by-row
/// upsert leaves them when a batch names a key twice (the first's `how`, the last's user).
/// Keys are told apart as the key index compares them, which ignores trailing spaces: two rows
/// for one index key would fail the insert.
fn owner_rows(owned: &[Owned]) -> String {
    let mut rows: Vec<(&str, &str, &str)> = Vec::with_capacity(owned.len());
    let mut at: HashMap<&str, usize> = HashMap::with_capacity(owned.len());
    for o in owned {
        match at.get(o.key.trim_end_matches(' ')) {
            Some(&i) => rows[i].1 = &o.user_id,
            None => {
                at.insert(o.key.trim_end_matches(' '), rows.len());
                rows.push((&o.key, &o.user_id, o.how));
            }
        }
    }
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|(key, user_id, how)| json!({"app_key": key, "user_id": user_id, "how": how}))
        .collect();
    Value::Array(rows).to_string()
}

// ---- writes, inside the caller's transaction ----------------------------------------------

async fn insert_items(c: &mut Client, run_id: i64, items: &[ItemReport]) -> Result<(), SyncError> {
    if items.is_empty() {
        return Ok(());
    }
    let mut q = Query::new(INSERT_RUN_ITEMS);
    q.bind(run_id);
    q.bind(items_json(items)?);
    execute(c, q).await?;
    Ok(())
}

/// Extend the lease; `SyncError::LeaseLost` when it is no longer ours (it expired and was
/// taken over). The caller's transaction is then rolled back.
async fn renew_lease(
    c: &mut Client,
    tenant: &str,
    holder: &str,
    expires: DateTime<Utc>,
) -> Result<(), SyncError> {
    let mut q = Query::new(RENEW_LEASE);
    q.bind(naive(expires));
    q.bind(tenant.to_string());
    q.bind(holder.to_string());
    if execute(c, q).await? == 0 {
        return Err(SyncError::LeaseLost);
    }
    Ok(())
}

/// Take the tenant's lease unless someone else holds an unexpired one.
async fn acquire_lease(c: &mut Client, r: &BeginRun) -> Result<bool, SqlError> {
    let mut q = Query::new(ACQUIRE_LEASE);
    q.bind(r.tenant.clone());
    q.bind(r.holder.clone());
    q.bind(naive(r.started_at));
    q.bind(naive(r.lease_expires));
    q.bind(r.take_from.clone());
    let row = first(c, q)
        .await?
        .ok_or_else(|| SqlError::missing("lease answer"))?;
    bit(&row, 0)
}

/// Runs of the tenant left `running` by a holder that stopped: they will never finish.
async fn abandon_stale_runs(
    c: &mut Client,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<(), SqlError> {
    let mut q = Query::new(ABANDON_STALE_RUNS);
    q.bind(naive(now));
    q.bind(tenant.to_string());
    execute(c, q).await.map(drop)
}

async fn insert_run(
    c: &mut Client,
    r: &BeginRun,
    status: RunStatus,
    approves: Option<i64>,
) -> Result<i64, SqlError> {
    let ended = (status != RunStatus::Running).then(|| naive(r.started_at));
    let mut q = Query::new(INSERT_RUN);
    q.bind(r.tenant.clone());
    q.bind(r.trigger);
    q.bind(r.dry_run);
    q.bind(r.full);
    q.bind(status.as_str());
    q.bind(naive(r.started_at));
    q.bind(ended);
    q.bind(r.watermark_from);
    q.bind(approves);
    q.bind(r.holder.clone());
    scalar(c, q).await
}

/// Note which run holds the lease (the admin API reports it).
async fn lease_run(c: &mut Client, r: &BeginRun, run_id: i64) -> Result<(), SqlError> {
    let mut q = Query::new(LEASE_RUN);
    q.bind(run_id);
    q.bind(r.tenant.clone());
    q.bind(r.holder.clone());
    execute(c, q).await.map(drop)
}

/// UPDATE_RUN: a run's status, end, counts, watermark and error.
async fn update_run(
    c: &mut Client,
    run_id: i64,
    status: RunStatus,
    counts: &Counts,
    watermark_to: Option<i64>,
    ended_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> Result<(), SqlError> {
    let mut q = Query::new(UPDATE_RUN);
    q.bind(status.as_str());
    q.bind(ended_at.map(naive));
    for n in [
        counts.created,
        counts.updated,
        counts.unchanged,
        counts.roles_added,
        counts.roles_removed,
        counts.deactivated,
        counts.offboarded,
        counts.failed,
        counts.quarantined,
    ] {
        q.bind(i64::try_from(n).unwrap_or(i64::MAX));
    }
    q.bind(watermark_to);
    q.bind(error.map(str::to_string));
    q.bind(run_id);
    execute(c, q).await.map(drop)
}

/// A lease as stored: holder, run_id, acquired_at, expires_at (LEASE_ROW, DROP_LEASE).
fn lease_row(r: &Row) -> Result<LeaseRow, SqlError> {
    Ok(LeaseRow {
        holder: text(r, 0)?,
        run_id: opt_int(r, 1)?,
        acquired_at: utc(r, 2)?,
        expires_at: utc(r, 3)?,
    })
}

/// An operator's action on the sync side, in the audit trail (inside the caller's
/// transaction, with the action it records).
async fn audit(
    c: &mut Client,
    tenant: &str,
    actor: &str,
    action: &str,
    detail: &Value,
    now: DateTime<Utc>,
) -> Result<(), SqlError> {
    let mut q = Query::new(INSERT_AUDIT);
    q.bind(naive(now));
    q.bind(tenant.to_string());
    q.bind(actor.to_string());
    q.bind(action.to_string());
    q.bind(detail.to_string());
    execute(c, q).await.map(drop)
}

/// Two-parameter statements keyed by tenant and user id.
async fn by_user(
    c: &mut Client,
    sql: &'static str,
    tenant: &str,
    user_id: &str,
) -> Result<u64, SqlError> {
    let mut q = Query::new(sql);
    q.bind(tenant.to_string());
    q.bind(user_id.to_string());
    execute(c, q).await
}

/// Remove a user, its memberships and its retry row from staging; the groups it leaves get a
/// new version, like any membership change. Emails go with the row (ON DELETE CASCADE).
async fn purge_user(
    c: &mut Client,
    tenant: &str,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<(), SqlError> {
    let mut q = Query::new(COUNT_MEMBERSHIPS);
    q.bind(tenant.to_string());
    q.bind(user_id.to_string());
    if scalar(c, q).await? > 0 {
        let seq = seq::next_seq(c).await?;
        remove_from_all_groups(c, tenant, user_id, seq, now).await?;
    }
    by_user(c, PURGE_USER, tenant, user_id).await?;
    by_user(c, DELETE_RETRY, tenant, user_id).await?;
    Ok(())
}

/// Application, table and scope: the first three parameters of every owners statement.
fn bind_rows_of(q: &mut Query<'_>, rows_of: &RowsOf) {
    q.bind(rows_of.application.clone());
    q.bind(rows_of.table.clone());
    q.bind(rows_of.scope.clone());
}

/// Who owns the rows of `keys` in `rows_of`'s table: key → owning tenant.
async fn owners(
    c: &mut Client,
    rows_of: &RowsOf,
    keys: &[&str],
) -> Result<HashMap<String, String>, SyncError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = Query::new(OWNERS);
    bind_rows_of(&mut q, rows_of);
    q.bind(serde_json::to_string(keys)?);
    rows(c, q)
        .await?
        .iter()
        .map(|r| Ok((text(r, 0)?, text(r, 1)?)))
        .collect()
}

/// Forget the `disowned` rows of `tenant` in `rows_of`'s table, then record the `owned` ones
/// (SQLite's `own`), in the caller's transaction.
async fn own(
    c: &mut Client,
    rows_of: &RowsOf,
    tenant: &str,
    owned: &[Owned],
    disowned: &[String],
    now: DateTime<Utc>,
) -> Result<(), SyncError> {
    if !disowned.is_empty() {
        let mut q = Query::new(DISOWN);
        bind_rows_of(&mut q, rows_of);
        q.bind(tenant.to_string());
        q.bind(serde_json::to_string(disowned)?);
        execute(c, q).await?;
    }
    if !owned.is_empty() {
        let mut q = Query::new(OWN.as_str());
        bind_rows_of(&mut q, rows_of);
        q.bind(tenant.to_string());
        q.bind(owner_rows(owned));
        q.bind(naive(now));
        execute(c, q).await?;
    }
    Ok(())
}

/// A lifecycle step's writes, in the caller's transaction: the same for a batch of due users
/// and for the queue's results.
async fn apply_lifecycle(c: &mut Client, r: &LifecycleRecord) -> Result<(), SyncError> {
    let t = r.tenant.as_str();
    let now = naive(r.now);
    insert_items(c, r.run_id, &r.items).await?;
    for o in &r.queue {
        let mut q = Query::new(QUEUE_OFFBOARDING);
        q.bind(t.to_string());
        q.bind(o.user_id.clone());
        q.bind(o.user_name.clone());
        q.bind(o.app_key.clone());
        q.bind(serde_json::to_string(&o.action)?);
        q.bind(serde_json::to_string(&o.roles)?);
        q.bind(now);
        q.bind(r.run_id);
        execute(c, q).await?;
    }
    for user_id in &r.purge {
        purge_user(c, t, user_id, r.now).await?;
    }
    for user_id in &r.unlink {
        by_user(c, DELETE_LINK, t, user_id).await?;
    }
    for (id, user_id) in &r.done {
        let mut q = Query::new(DELETE_OFFBOARDING);
        q.bind(*id);
        execute(c, q).await?;
        by_user(c, DELETE_LINK, t, user_id).await?;
    }
    for (id, error) in &r.failed {
        let mut q = Query::new(OFFBOARDING_FAILED);
        q.bind(error.clone());
        q.bind(*id);
        execute(c, q).await?;
    }
    own(c, &r.rows_of, t, &[], &r.disowned, r.now).await?;
    if let Some(holder) = &r.holder {
        renew_lease(c, t, holder, r.lease_expires).await?;
    }
    Ok(())
}

/// A batch's record, set-based: the items, links and retries each travel as one JSON
/// parameter.
async fn record(c: &mut Client, r: &Record) -> Result<(), SyncError> {
    let now: NaiveDateTime = naive(r.now);
    insert_items(c, r.run_id, &r.items).await?;
    if !r.dry_run {
        let t = r.tenant.as_str();
        if !r.links.is_empty() {
            let mut q = Query::new(UPSERT_LINKS.as_str());
            q.bind(t.to_string());
            q.bind(links_json(&r.links)?);
            q.bind(now);
            execute(c, q).await?;
        }
        if !r.retries.is_empty() {
            let mut q = Query::new(UPSERT_RETRIES.as_str());
            q.bind(t.to_string());
            q.bind(retries_json(&r.retries));
            q.bind(now);
            q.bind(i64::from(r.quarantine_after));
            execute(c, q).await?;
        }
        if !r.cleared.is_empty() {
            let mut q = Query::new(CLEAR_RETRIES);
            q.bind(t.to_string());
            q.bind(serde_json::to_string(&r.cleared)?);
            execute(c, q).await?;
        }
        if let Some(mark) = r.advance {
            let mut q = Query::new(ADVANCE_WATERMARK);
            q.bind(t.to_string());
            q.bind(mark.seq);
            q.bind(mark.pk);
            q.bind(now);
            execute(c, q).await?;
        }
        own(c, &r.rows_of, t, &r.owned, &r.disowned, r.now).await?;
        renew_lease(c, t, &r.holder, r.lease_expires).await?;
    }
    update_run(
        c,
        r.run_id,
        RunStatus::Running,
        &r.counts,
        r.watermark_to,
        None,
        None,
    )
    .await?;
    Ok(())
}

#[async_trait]
impl SyncStore for MssqlStaging {
    async fn watermark(&self, tenant: &str) -> Result<Mark, SyncError> {
        let mut q = Query::new(GET_WATERMARK);
        q.bind(tenant.to_string());
        let mut c = self.pool.get().await?;
        Ok(match first(&mut c, q).await? {
            Some(r) => Mark {
                seq: int(&r, 0)?,
                pk: int(&r, 1)?,
            },
            None => Mark::default(),
        })
    }

    /// Waits for the writers that took a value to end (see [`super::seq`]).
    async fn high_seq(&self) -> Result<i64, SyncError> {
        let mut c = self.pool.get().await?;
        Ok(seq::high_seq(&mut c).await?)
    }

    async fn count_changed(&self, tenant: &str, after: Mark, high: i64) -> Result<i64, SyncError> {
        let mut q = Query::new(COUNT_CHANGED);
        q.bind(tenant.to_string());
        q.bind(after.seq);
        q.bind(after.pk);
        q.bind(high);
        let mut c = self.pool.get().await?;
        Ok(scalar(&mut c, q).await?)
    }

    /// Users (groups included) and their links in two statements on one connection, given
    /// back before the batch is planned on a blocking thread.
    async fn read_batch(
        &self,
        tenant: &str,
        read: Read,
        limit: u32,
        plan: BatchPlanner,
    ) -> Result<Planned, SyncError> {
        let (users, links) = {
            let mut c = self.pool.get().await?;
            let users = user_rows(rows(&mut c, read_query(tenant, read, limit)).await?)?;
            let links = links(&mut c, tenant, &users).await?;
            (users, links)
        };
        plan_blocking(move || plan(users, links)).await
    }

    async fn record(&self, r: Record) -> Result<(), SyncError> {
        transaction(&self.pool, async |c: &mut Client| record(c, &r).await).await
    }

    async fn begin_run(&self, run: BeginRun) -> Result<Begun, SyncError> {
        transaction(&self.pool, async |c: &mut Client| {
            // A dry run writes nothing but its ledger entry, so it needs no lease.
            let leased = run.dry_run || acquire_lease(c, &run).await?;
            if leased && !run.dry_run {
                abandon_stale_runs(c, &run.tenant, run.started_at).await?;
                let mut q = Query::new(DROP_ORPHAN_RETRIES);
                q.bind(run.tenant.clone());
                execute(c, q).await?;
            }
            let status = if leased {
                RunStatus::Running
            } else {
                RunStatus::Skipped
            };
            let run_id = insert_run(c, &run, status, None).await?;
            if leased && !run.dry_run {
                lease_run(c, &run, run_id).await?;
            }
            Ok(Begun { run_id, leased })
        })
        .await
    }

    async fn begin_approval(
        &self,
        run: BeginRun,
        approves: i64,
        approver: &str,
    ) -> Result<i64, SyncError> {
        transaction(&self.pool, async |c: &mut Client| {
            if !acquire_lease(c, &run).await? {
                return Err(SyncError::Busy(run.tenant.clone()));
            }
            abandon_stale_runs(c, &run.tenant, run.started_at).await?;
            let run_id = insert_run(c, &run, RunStatus::Running, Some(approves)).await?;
            // The admin API reports which run holds the lease.
            lease_run(c, &run, run_id).await?;
            let mut q = Query::new(APPROVE_RUN);
            q.bind(naive(run.started_at));
            q.bind(run_id);
            q.bind(approver.to_string());
            q.bind(approves);
            if execute(c, q).await? == 0 {
                // Approved meanwhile (or never held): the transaction is rolled back.
                return Err(SyncError::NotAwaitingApproval(approves));
            }
            let detail = json!({ "run_id": approves, "approving_run": run_id });
            audit(c, &run.tenant, approver, "approve", &detail, run.started_at).await?;
            Ok(run_id)
        })
        .await
    }

    async fn prune_runs(&self, prune: PruneRuns) -> Result<u64, SyncError> {
        let mut pruned = 0;
        // A bounded batch per transaction: its locks are held for one batch at most.
        loop {
            let n = transaction(&self.pool, async |c: &mut Client| {
                let mut q = Query::new(PRUNABLE_RUNS);
                q.bind(naive(prune.before));
                q.bind(naive(prune.noop_before));
                q.bind(PRUNE_BATCH);
                q.bind(prune.tenant.clone());
                let ids = rows(c, q)
                    .await?
                    .iter()
                    .map(|r| int(r, 0))
                    .collect::<Result<Vec<i64>, SqlError>>()?;
                if ids.is_empty() {
                    return Ok::<u64, SyncError>(0);
                }
                let mut q = Query::new(PRUNE_RUNS);
                q.bind(serde_json::to_string(&ids)?);
                execute(c, q).await?;
                Ok(ids.len() as u64)
            })
            .await?;
            pruned += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(pruned);
            }
        }
    }

    async fn finish_run(&self, end: FinishRun) -> Result<(), SyncError> {
        transaction(&self.pool, async |c: &mut Client| {
            update_run(
                c,
                end.run_id,
                end.status,
                &end.counts,
                end.watermark_to,
                Some(end.ended_at),
                end.error.as_deref(),
            )
            .await?;
            if let Some(holder) = &end.holder {
                let mut q = Query::new(RELEASE_LEASE);
                q.bind(end.tenant.clone());
                q.bind(holder.clone());
                execute(c, q).await?;
            }
            Ok::<_, SyncError>(())
        })
        .await
    }

    /// The run's heartbeat and, for a leased run, the lease's renewal, in one transaction.
    async fn heartbeat(&self, beat: Heartbeat) -> Result<bool, SyncError> {
        transaction(&self.pool, async |c: &mut Client| {
            let mut q = Query::new(HEARTBEAT_RUN);
            q.bind(naive(beat.now));
            q.bind(beat.run_id);
            execute(c, q).await?;
            if !beat.leased {
                return Ok(true);
            }
            let mut q = Query::new(RENEW_LEASE);
            q.bind(naive(beat.lease_expires));
            q.bind(beat.tenant.clone());
            q.bind(beat.holder.clone());
            Ok::<_, SyncError>(execute(c, q).await? > 0)
        })
        .await
    }

    async fn running_runs(&self, tenant: Option<&str>) -> Result<Vec<RunningRun>, SyncError> {
        let mut q = Query::new(running_runs_sql(tenant.is_some()));
        if let Some(t) = tenant {
            q.bind(t.to_string());
        }
        let mut c = self.pool.get().await?;
        rows(&mut c, q)
            .await?
            .iter()
            .map(|r| {
                Ok(RunningRun {
                    id: int(r, 0)?,
                    tenant: text(r, 1)?,
                    holder: opt_text(r, 2)?,
                    heartbeat_at: opt_utc(r, 3)?,
                    started_at: utc(r, 4)?,
                    dry_run: bit(r, 5)?,
                })
            })
            .collect()
    }

    async fn close_runs(
        &self,
        ids: &[i64],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, SyncError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut q = Query::new(CLOSE_RUNS);
        q.bind(naive(now));
        q.bind(reason.to_string());
        q.bind(serde_json::to_string(ids)?);
        let mut c = self.pool.get().await?;
        Ok(execute(&mut c, q).await?)
    }

    async fn lease_row(&self, tenant: &str) -> Result<Option<LeaseRow>, SyncError> {
        let mut q = Query::new(LEASE_ROW);
        q.bind(tenant.to_string());
        let mut c = self.pool.get().await?;
        Ok(first(&mut c, q)
            .await?
            .as_ref()
            .map(lease_row)
            .transpose()?)
    }

    /// The lease deleted and answered in one statement, then audited, in one transaction.
    async fn release_lease(
        &self,
        tenant: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LeaseRow>, SyncError> {
        transaction(&self.pool, async |c: &mut Client| {
            let mut q = Query::new(DROP_LEASE);
            q.bind(tenant.to_string());
            let Some(lease) = first(c, q).await?.as_ref().map(lease_row).transpose()? else {
                return Ok(None);
            };
            let detail = json!({
                "holder": lease.holder,
                "run_id": lease.run_id,
                "expires_at": format_time(lease.expires_at),
            });
            audit(c, tenant, actor, "release_lease", &detail, now).await?;
            Ok::<_, SyncError>(Some(lease))
        })
        .await
    }

    async fn owners(
        &self,
        rows: &RowsOf,
        keys: &[String],
    ) -> Result<HashMap<String, String>, SyncError> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut c = self.pool.get().await?;
        owners(&mut c, rows, &keys).await
    }

    /// The claims recorded and their owners read back in one transaction: a key another
    /// tenant claimed first (committed, or waited for on the key's lock) is taken.
    async fn claim(
        &self,
        rows: &RowsOf,
        tenant: &str,
        claims: Vec<Owned>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, SyncError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        transaction(&self.pool, async |c: &mut Client| {
            own(c, rows, tenant, &claims, &[], now).await?;
            let keys: Vec<&str> = claims.iter().map(|o| o.key.as_str()).collect();
            let owner = owners(c, rows, &keys).await?;
            Ok::<_, SyncError>(
                claims
                    .iter()
                    .filter(|o| owner.get(&o.key).is_some_and(|t| t != tenant))
                    .map(|o| o.key.clone())
                    .collect(),
            )
        })
        .await
    }

    async fn links_page(
        &self,
        tenant: &str,
        after_user_id: &str,
        limit: u32,
    ) -> Result<Vec<(String, Link)>, SyncError> {
        let mut q = Query::new(LINKS_PAGE);
        q.bind(tenant.to_string());
        q.bind(after_user_id.to_string());
        q.bind(i64::from(limit));
        let mut c = self.pool.get().await?;
        rows(&mut c, q).await?.iter().map(user_link).collect()
    }

    async fn count_quarantined(&self, tenant: &str) -> Result<i64, SyncError> {
        let mut q = Query::new(COUNT_QUARANTINED);
        q.bind(tenant.to_string());
        let mut c = self.pool.get().await?;
        Ok(scalar(&mut c, q).await?)
    }

    async fn release_quarantine(
        &self,
        tenant: &str,
        user_id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, SyncError> {
        transaction(&self.pool, async |c: &mut Client| {
            if by_user(c, RELEASE_QUARANTINE, tenant, user_id).await? == 0 {
                return Ok(false);
            }
            let detail = json!({ "user_id": user_id });
            audit(c, tenant, actor, "release_quarantine", &detail, now).await?;
            Ok::<_, SyncError>(true)
        })
        .await
    }

    async fn run_state(&self, run_id: i64) -> Result<Option<RunState>, SyncError> {
        let mut q = Query::new(GET_RUN);
        q.bind(run_id);
        let mut c = self.pool.get().await?;
        let Some(r) = first(&mut c, q).await? else {
            return Ok(None);
        };
        Ok(Some(RunState {
            tenant: text(&r, 0)?,
            status: text(&r, 1)?,
            dry_run: bit(&r, 2)?,
            approved: r
                .try_get::<NaiveDateTime, _>(3)
                .map_err(SqlError::from)?
                .is_some(),
        }))
    }

    async fn count_due(
        &self,
        tenant: &str,
        cutoff: DateTime<Utc>,
        held_in: Option<i64>,
    ) -> Result<i64, SyncError> {
        let mut q = Query::new(count_due(held_in.is_some()));
        q.bind(tenant.to_string());
        q.bind(naive(cutoff));
        if let Some(run) = held_in {
            q.bind(run);
        }
        let mut c = self.pool.get().await?;
        Ok(scalar(&mut c, q).await?)
    }

    async fn count_links(&self, tenant: &str) -> Result<i64, SyncError> {
        let mut q = Query::new(COUNT_LINKS);
        q.bind(tenant.to_string());
        let mut c = self.pool.get().await?;
        Ok(scalar(&mut c, q).await?)
    }

    /// One transaction: the due users read locked (see [`due_users`]), their links and the
    /// key counts, the plan (on a blocking thread, the transaction waiting), its record.
    async fn lifecycle_batch(
        &self,
        due: DueQuery,
        plan: LifecyclePlanner,
    ) -> Result<Option<LifecycleDone>, SyncError> {
        transaction(&self.pool, async |c: &mut Client| {
            let mut q = Query::new(due_users(due.held_in.is_some()));
            q.bind(due.tenant.clone());
            q.bind(naive(due.cutoff));
            q.bind(due.after_pk);
            q.bind(i64::from(due.limit));
            if let Some(run) = due.held_in {
                q.bind(run);
            }
            let users = user_rows(rows(c, q).await?)?;
            let Some(last_pk) = users.last().map(|u| u.pk) else {
                return Ok(None);
            };
            let links = links(c, &due.tenant, &users).await?;
            let key_links = key_links(c, &due.tenant, &links).await?;
            let record = plan_blocking(move || {
                plan(DueBatch {
                    rows: users,
                    links,
                    key_links,
                })
            })
            .await?;
            apply_lifecycle(c, &record).await?;
            Ok(Some(LifecycleDone {
                last_pk,
                items: record.items,
            }))
        })
        .await
    }

    async fn queued(
        &self,
        tenant: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Queued>, SyncError> {
        let mut q = Query::new(PENDING_OFFBOARDINGS);
        q.bind(tenant.to_string());
        q.bind(after_id);
        q.bind(i64::from(limit));
        let mut c = self.pool.get().await?;
        rows(&mut c, q)
            .await?
            .iter()
            .map(|r| {
                Ok(Queued {
                    id: int(r, 0)?,
                    user_id: text(r, 1)?,
                    user_name: opt_text(r, 2)?,
                    app_key: text(r, 3)?,
                    action: serde_json::from_str(&text(r, 4)?)?,
                    roles: serde_json::from_str(&text(r, 5)?)?,
                    applied: opt_text(r, 6)?
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn record_lifecycle(&self, record: LifecycleRecord) -> Result<(), SyncError> {
        transaction(&self.pool, async |c: &mut Client| {
            apply_lifecycle(c, &record).await
        })
        .await
    }
}

/// Every statement of this module, each variant of the dynamic ones.
#[cfg(test)]
pub(super) fn statements() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("CHANGED_USERS", CHANGED_USERS.as_str()),
        ("COUNT_CHANGED", COUNT_CHANGED),
        ("RETRY_USERS", RETRY_USERS.as_str()),
        ("PURGE_USER", PURGE_USER),
        ("COUNT_MEMBERSHIPS", COUNT_MEMBERSHIPS),
        ("LINKS_FOR_USERS", LINKS_FOR_USERS),
        ("COUNT_LINKS", COUNT_LINKS),
        ("KEY_LINKS", KEY_LINKS),
        ("UPSERT_LINKS", UPSERT_LINKS.as_str()),
        ("DELETE_LINK", DELETE_LINK),
        ("GET_WATERMARK", GET_WATERMARK),
        ("ADVANCE_WATERMARK", ADVANCE_WATERMARK),
        ("UPSERT_RETRIES", UPSERT_RETRIES.as_str()),
        ("DROP_ORPHAN_RETRIES", DROP_ORPHAN_RETRIES),
        ("CLEAR_RETRIES", CLEAR_RETRIES),
        ("DELETE_RETRY", DELETE_RETRY),
        ("ACQUIRE_LEASE", ACQUIRE_LEASE),
        ("RENEW_LEASE", RENEW_LEASE),
        ("LEASE_RUN", LEASE_RUN),
        ("RELEASE_LEASE", RELEASE_LEASE),
        ("LEASE_ROW", LEASE_ROW),
        ("DROP_LEASE", DROP_LEASE),
        ("INSERT_AUDIT", INSERT_AUDIT),
        ("COUNT_QUARANTINED", COUNT_QUARANTINED),
        ("RELEASE_QUARANTINE", RELEASE_QUARANTINE),
        ("HEARTBEAT_RUN", HEARTBEAT_RUN),
        ("CLOSE_RUNS", CLOSE_RUNS),
        ("INSERT_RUN", INSERT_RUN),
        ("ABANDON_STALE_RUNS", ABANDON_STALE_RUNS),
        ("UPDATE_RUN", UPDATE_RUN),
        ("GET_RUN", GET_RUN),
        ("APPROVE_RUN", APPROVE_RUN),
        ("PRUNABLE_RUNS", PRUNABLE_RUNS),
        ("PRUNE_RUNS", PRUNE_RUNS),
        ("INSERT_RUN_ITEMS", INSERT_RUN_ITEMS),
        ("QUEUE_OFFBOARDING", QUEUE_OFFBOARDING),
        ("PENDING_OFFBOARDINGS", PENDING_OFFBOARDINGS),
        ("DELETE_OFFBOARDING", DELETE_OFFBOARDING),
        ("OFFBOARDING_FAILED", OFFBOARDING_FAILED),
        ("OWNERS", OWNERS),
        ("OWN", OWN.as_str()),
        ("DISOWN", DISOWN),
        ("LINKS_PAGE", LINKS_PAGE),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect();
    for held in [false, true] {
        out.push((format!("count_due({held})"), count_due(held)));
        out.push((format!("due_users({held})"), due_users(held)));
    }
    for one in [false, true] {
        out.push((format!("running_runs_sql({one})"), running_runs_sql(one)));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::db::mssql::tsql::param_numbers;
    use crate::sync::{Change, Outcome};

    /// How many parameters this module binds for each of its statements, against the numbers
    /// the statement uses.
    #[test]
    fn the_sync_engine_statements_take_as_many_parameters_as_it_binds() {
        let engine: [(&str, &str, usize); 43] = [
            ("GET_WATERMARK", GET_WATERMARK, 1),
            ("COUNT_CHANGED", COUNT_CHANGED, 4),
            ("CHANGED_USERS", &CHANGED_USERS, 5),
            ("RETRY_USERS", &RETRY_USERS, 5),
            ("LINKS_FOR_USERS", LINKS_FOR_USERS, 2),
            ("KEY_LINKS", KEY_LINKS, 2),
            ("COUNT_LINKS", COUNT_LINKS, 1),
            ("PENDING_OFFBOARDINGS", PENDING_OFFBOARDINGS, 3),
            ("GET_RUN", GET_RUN, 1),
            ("INSERT_RUN_ITEMS", INSERT_RUN_ITEMS, 2),
            ("UPSERT_LINKS", &UPSERT_LINKS, 3),
            ("UPSERT_RETRIES", &UPSERT_RETRIES, 4),
            ("CLEAR_RETRIES", CLEAR_RETRIES, 2),
            ("ADVANCE_WATERMARK", ADVANCE_WATERMARK, 4),
            ("ACQUIRE_LEASE", ACQUIRE_LEASE, 5),
            ("RENEW_LEASE", RENEW_LEASE, 3),
            ("RELEASE_LEASE", RELEASE_LEASE, 2),
            ("LEASE_ROW", LEASE_ROW, 1),
            ("DROP_LEASE", DROP_LEASE, 1),
            ("INSERT_AUDIT", INSERT_AUDIT, 5),
            ("COUNT_QUARANTINED", COUNT_QUARANTINED, 1),
            ("RELEASE_QUARANTINE", RELEASE_QUARANTINE, 2),
            ("HEARTBEAT_RUN", HEARTBEAT_RUN, 2),
            ("CLOSE_RUNS", CLOSE_RUNS, 3),
            ("LEASE_RUN", LEASE_RUN, 3),
            ("ABANDON_STALE_RUNS", ABANDON_STALE_RUNS, 2),
            ("DROP_ORPHAN_RETRIES", DROP_ORPHAN_RETRIES, 1),
            ("INSERT_RUN", INSERT_RUN, 10),
            ("UPDATE_RUN", UPDATE_RUN, 14),
            ("APPROVE_RUN", APPROVE_RUN, 4),
            ("PRUNABLE_RUNS", PRUNABLE_RUNS, 4),
            ("PRUNE_RUNS", PRUNE_RUNS, 1),
            ("QUEUE_OFFBOARDING", QUEUE_OFFBOARDING, 8),
            ("COUNT_MEMBERSHIPS", COUNT_MEMBERSHIPS, 2),
            ("PURGE_USER", PURGE_USER, 2),
            ("DELETE_RETRY", DELETE_RETRY, 2),
            ("DELETE_LINK", DELETE_LINK, 2),
            ("DELETE_OFFBOARDING", DELETE_OFFBOARDING, 1),
            ("OFFBOARDING_FAILED", OFFBOARDING_FAILED, 2),
            ("OWNERS", OWNERS, 4),
            ("OWN", &OWN, 6),
            ("DISOWN", DISOWN, 5),
            ("LINKS_PAGE", LINKS_PAGE, 3),
        ];
        for (name, sql, binds) in engine {
            assert_eq!(param_numbers(sql).len(), binds, "{name}");
        }
        for (held, binds) in [(false, 2), (true, 3)] {
            assert_eq!(param_numbers(&count_due(held)).len(), binds);
        }
        for (held, binds) in [(false, 4), (true, 5)] {
            assert_eq!(param_numbers(&due_users(held)).len(), binds);
        }
        for (one, binds) in [(false, 0), (true, 1)] {
            assert_eq!(param_numbers(&running_runs_sql(one)).len(), binds);
        }
        // The run is the last parameter of the held form.
        assert!(due_users(true).contains("i.run_id = @P5"));
        assert!(count_due(true).contains("i.run_id = @P3"));
        // The due users stay locked until the lifecycle batch's transaction ends.
        for held in [false, true] {
            assert!(
                due_users(held).contains("FROM scim.users u WITH (UPDLOCK, ROWLOCK)"),
                "{}",
                due_users(held)
            );
        }
    }

    /// The `'$.key'` paths an OPENJSON … WITH clause reads.
    fn paths(sql: &str) -> BTreeSet<String> {
        sql.split("'$.")
            .skip(1)
            .filter_map(|rest| rest.split('\'').next())
            .map(str::to_string)
            .collect()
    }

    /// The keys of the first row of a JSON array.
    fn keys(rows: &str) -> BTreeSet<String> {
        let v: Value = serde_json::from_str(rows).unwrap();
        v[0].as_object().unwrap().keys().cloned().collect()
    }

    /// The rows a batch binds carry exactly the keys its statements read: a key the statement
    /// reads that the row lacks would be NULL on the server (and a NOT NULL column refused).
    #[test]
    fn batch_rows_carry_every_key_their_statement_reads() {
        let item = ItemReport {
            user_id: "u1".into(),
            user_name: Some("ann@example.com".into()),
            app_key: Some("ann".into()),
            outcome: Outcome::Updated,
            action: None,
            changes: BTreeMap::from([(
                "FirstName".to_string(),
                Change {
                    before: Value::Null,
                    after: json!("Ann"),
                },
            )]),
            roles_added: vec!["User".into()],
            roles_removed: vec![],
            error: None,
            log_reason: None,
        };
        let items = items_json(std::slice::from_ref(&item)).unwrap();
        assert_eq!(keys(&items), paths(INSERT_RUN_ITEMS));
        let row: Value = serde_json::from_str(&items).unwrap();
        // JSON columns travel as JSON text (read as NVARCHAR(MAX), not AS JSON); empty lists as null.
        assert_eq!(
            row[0]["changes"],
            json!("{\"FirstName\":{\"before\":null,\"after\":\"Ann\"}}")
        );
        assert_eq!(row[0]["roles_added"], json!("[\"User\"]"));
        assert_eq!(row[0]["roles_removed"], Value::Null);

        let links = links_json(&[LinkWrite {
            user_id: "u1".into(),
            app_key: "ann".into(),
            fingerprint: "f".into(),
            applied_roles: BTreeSet::from(["User".to_string()]),
            fields: BTreeMap::new(),
            state: "active",
        }])
        .unwrap();
        assert_eq!(keys(&links), paths(&UPSERT_LINKS));
        let retries = retries_json(&[RetryWrite {
            user_id: "u2".into(),
            error: "refused".into(),
            change_seq: 7,
        }]);
        assert_eq!(keys(&retries), paths(&UPSERT_RETRIES));
        let row: Value = serde_json::from_str(&retries).unwrap();
        assert_eq!(row[0]["change_seq"], json!(7));
        let owned = owner_rows(&[Owned {
            key: "ann".into(),
            user_id: "u1".into(),
            how: "created",
        }]);
        assert_eq!(keys(&owned), paths(&OWN));
    }

    /// A key the batch names twice is one row (one insert, not a key violation), as SQLite's
    /// row-by-row upsert leaves it; so is a key that differs only by trailing spaces, which
    /// the key index takes for the same key.
    #[test]
    fn owned_rows_are_one_per_key() {
        let o = |key: &str, user_id: &str, how: &'static str| Owned {
            key: key.into(),
            user_id: user_id.into(),
            how,
        };
        let rows: Value = serde_json::from_str(&owner_rows(&[
            o("ann", "u1", "created"),
            o("bob", "u2", "adopted"),
            o("ann", "u3", "linked"),
            o("bob  ", "u4", "created"),
        ]))
        .unwrap();
        assert_eq!(
            rows,
            json!([
                {"app_key": "ann", "user_id": "u3", "how": "created"},
                {"app_key": "bob", "user_id": "u4", "how": "adopted"},
            ])
        );
    }
}
