//! Every statement the SQL Server backend issues, as T-SQL text: the staging store, the admin
//! API's counts and the provisioning log, the sync engine's state and ledger, the lease, the migrator and the application writer.
//!
//! Parameters are `@P1…` (tiberius sends a statement with parameters through sp_executesql, so
//! a parameter may be named more than once and a batch may hold several statements). Each
//! constant documents its parameters in order. Identifiers of application tables come from the
//! mapping and go through [`quote_ident`]; values are always parameters.
//!
//! A test parses every statement and every filter translation with sqlparser's MsSqlDialect;
//! the few constructs it cannot parse are listed there, each with its reason.

use std::sync::LazyLock;

use super::filter_sql::Condition;
use crate::scim::schema::ResourceKind;
use crate::store::Sort;

const CUSTOM_COLUMNS: [&str; 16] = [
    "custom_attribute_01",
    "custom_attribute_02",
    "custom_attribute_03",
    "custom_attribute_04",
    "custom_attribute_05",
    "custom_attribute_06",
    "custom_attribute_07",
    "custom_attribute_08",
    "custom_attribute_09",
    "custom_attribute_10",
    "custom_attribute_11",
    "custom_attribute_12",
    "custom_attribute_13",
    "custom_attribute_14",
    "custom_attribute_15",
    "custom_attribute_16",
];

/// `@Pfrom, @Pfrom+1, …` (n names).
fn params(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("@P{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- connection and migrations --------------------------------------------------------------

/// Run on every new connection. Filtered indexes (users_user_name) refuse writes unless these
/// options are on; drivers differ in what they set at login, so the service sets them itself.
pub const CONNECTION_INIT: &str = "SET ANSI_NULLS ON; SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; \
     SET ARITHABORT ON; SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; \
     SET NUMERIC_ROUNDABORT OFF; SET XACT_ABORT ON;";

/// The health check of `ping`.
pub const PING: &str = "SELECT 1";

/// The pool's check-out test: how many transactions the connection has open. A connection
/// handed back with one still open (a cancelled request between BEGIN and COMMIT, a rollback
/// that failed) must not be reused: the next BEGIN would nest in it and its COMMIT commit
/// nothing, and the locks it holds would stay held.
pub const CHECKOUT: &str = "SELECT @@TRANCOUNT";

/// The migrations ledger, created when missing (idempotent).
pub const MIGRATIONS_TABLE: &str = "IF OBJECT_ID(N'dbo.scim_bridge_migrations', N'U') IS NULL \
     CREATE TABLE dbo.scim_bridge_migrations (\
     version INT NOT NULL CONSTRAINT scim_bridge_migrations_pk PRIMARY KEY, \
     name NVARCHAR(200) NOT NULL, \
     checksum CHAR(64) NOT NULL, \
     applied_at DATETIME2(3) NOT NULL CONSTRAINT scim_bridge_migrations_applied_default DEFAULT SYSUTCDATETIME())";

/// One migrator at a time, across processes: an exclusive lock owned by the migration
/// transaction; an error when not granted within a minute. (sp_getapplock's return code is
/// not captured: APPLOCK_MODE says whether the lock is held, in a form every tool parses.)
pub const MIGRATION_LOCK: &str = "EXEC sp_getapplock @Resource = N'scim-bridge.migrate', \
     @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = 60000; \
     IF APPLOCK_MODE(N'public', N'scim-bridge.migrate', N'Transaction') = N'NoLock' \
     THROW 51000, N'another process is migrating this database', 1";

/// version, name, checksum of the applied migrations.
pub const APPLIED_MIGRATIONS: &str =
    "SELECT version, name, checksum FROM dbo.scim_bridge_migrations ORDER BY version";

/// @P1 version, @P2 name, @P3 checksum (hex SHA-256 of the file).
pub const RECORD_MIGRATION: &str =
    "INSERT INTO dbo.scim_bridge_migrations (version, name, checksum) VALUES (@P1, @P2, @P3)";

// ---- change sequence ------------------------------------------------------------------------

/// The next change sequence value for a write transaction. The shared application lock, held
/// until the transaction ends, lets [`HIGH_SEQ`] wait for every transaction that took a value.
/// The lock waits (here and in [`HIGH_SEQ`]) end before the default command timeout (30 s):
/// the server's THROW then fails the statement cleanly, where a client-side timeout would
/// leave the connection out of step with the server and its transaction open.
pub const NEXT_SEQ: &str = "EXEC sp_getapplock @Resource = N'scim.change_seq', \
     @LockMode = N'Shared', @LockOwner = N'Transaction', @LockTimeout = 20000; \
     IF APPLOCK_MODE(N'public', N'scim.change_seq', N'Transaction') = N'NoLock' \
     THROW 51000, N'the change sequence lock was not granted', 1; \
     SELECT NEXT VALUE FOR scim.change_seq";

/// The highest change sequence value all of whose transactions have ended: taking the lock
/// exclusively waits for the writers holding it shared; writers that come later take later
/// values. Run in its own short transaction. Values of rolled-back transactions are gaps.
pub const HIGH_SEQ: &str = "EXEC sp_getapplock @Resource = N'scim.change_seq', \
     @LockMode = N'Exclusive', @LockOwner = N'Transaction', @LockTimeout = 20000; \
     IF APPLOCK_MODE(N'public', N'scim.change_seq', N'Transaction') = N'NoLock' \
     THROW 51000, N'the change sequence lock was not granted', 1; \
     SELECT CAST(current_value AS BIGINT) FROM sys.sequences WHERE object_id = OBJECT_ID(N'scim.change_seq')";

// ---- users ----------------------------------------------------------------------------------

/// @P1 tenant, @P2 id, @P3 user_name, @P4 user_name_ci, @P5 external_id, @P6 display_name,
/// @P7 active, @P8 deactivated_at, @P9…@P24 custom attributes, @P25 doc, @P26 doc_ci,
/// @P27 change_seq, @P28 now (created and last_modified). Returns pk.
///
/// Two concurrent POSTs of one userName: the filtered unique index users_user_name makes the
/// second INSERT wait for the first transaction's key lock and then fail with error 2601
/// (reported as a conflict), or succeed if the first rolled back.
pub static INSERT_USER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO scim.users (tenant, id, user_name, user_name_ci, external_id, display_name, active, \
         deactivated_at, {}, doc, doc_ci, change_seq, created, last_modified) OUTPUT inserted.pk \
         VALUES ({}, {}, @P25, @P26, @P27, @P28, @P28)",
        CUSTOM_COLUMNS.join(", "),
        params(1, 8),
        params(9, 16),
    )
});

/// Compare-and-swap update of a live user: @P1 user_name, @P2 user_name_ci, @P3 external_id,
/// @P4 display_name, @P5 active, @P6 now, @P7…@P22 custom attributes, @P23 doc, @P24 doc_ci,
/// @P25 change_seq, @P26 pk, @P27 the version read. No row updated: it changed meanwhile.
/// deactivated_at is set when active goes 1 → 0 and cleared when it goes back.
pub static UPDATE_USER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE scim.users SET user_name = @P1, user_name_ci = @P2, external_id = @P3, display_name = @P4, \
         deactivated_at = CASE WHEN @P5 = 0 AND active = 1 THEN @P6 WHEN @P5 = 1 THEN NULL ELSE deactivated_at END, \
         active = @P5, {}, doc = @P23, doc_ci = @P24, change_seq = @P25, last_modified = @P6 \
         WHERE pk = @P26 AND change_seq = @P27 AND deleted_at IS NULL",
        CUSTOM_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = @P{}", i + 7))
            .collect::<Vec<_>>()
            .join(", ")
    )
});

/// The current document and version of a live user: @P1 tenant, @P2 id.
pub const CURRENT_USER: &str = "SELECT pk, doc, change_seq, created, last_modified FROM scim.users \
     WHERE tenant = @P1 AND id = @P2 AND deleted_at IS NULL";

/// The version of a live user, locked for the rest of the transaction: @P1 tenant, @P2 id.
pub const USER_VERSION_FOR_UPDATE: &str = "SELECT change_seq FROM scim.users WITH (UPDLOCK, ROWLOCK) \
     WHERE tenant = @P1 AND id = @P2 AND deleted_at IS NULL";

/// DELETE from the client (the row stays for the sync lifecycle): @P1 now, @P2 change_seq,
/// @P3 tenant, @P4 id. Returns pk.
pub const SOFT_DELETE_USER: &str = "UPDATE scim.users SET deleted_at = @P1, active = 0, \
     deactivated_at = COALESCE(deactivated_at, @P1), change_seq = @P2, last_modified = @P1 \
     OUTPUT inserted.pk WHERE tenant = @P3 AND id = @P4 AND deleted_at IS NULL";

/// @P1 user pk.
pub const DELETE_USER_EMAILS: &str = "DELETE FROM scim.user_emails WHERE user_pk = @P1";

/// All of a user's email rows in one statement: @P1 user pk, @P2 tenant, @P3 JSON array of
/// {"type": …, "value": …, "primary": …} (already lower-cased).
pub const INSERT_USER_EMAILS: &str = "INSERT INTO scim.user_emails (user_pk, tenant, type_ci, value_ci, is_primary) \
     SELECT @P1, @P2, j.type_ci, j.value_ci, j.is_primary FROM OPENJSON(@P3) \
     WITH (type_ci NVARCHAR(64) '$.type', value_ci NVARCHAR(320) '$.value', is_primary BIT '$.primary') j";

/// Stamp one user: @P1 change_seq, @P2 tenant, @P3 id.
pub const STAMP_USER: &str =
    "UPDATE scim.users SET change_seq = @P1 WHERE tenant = @P2 AND id = @P3";

// ---- groups ---------------------------------------------------------------------------------

/// @P1 tenant, @P2 id, @P3 display_name, @P4 display_name_ci, @P5 external_id, @P6 doc,
/// @P7 doc_ci, @P8 change_seq, @P9 now. Returns pk. A duplicate displayName fails with 2601.
pub const INSERT_GROUP: &str = "INSERT INTO scim.groups (tenant, id, display_name, display_name_ci, external_id, \
     doc, doc_ci, change_seq, created, last_modified) OUTPUT inserted.pk \
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P9)";

/// @P1 tenant, @P2 id.
pub const CURRENT_GROUP: &str = "SELECT pk, doc, change_seq, created, last_modified FROM scim.groups \
     WHERE tenant = @P1 AND id = @P2";

/// The version of a group, locked for the rest of the transaction: @P1 pk.
pub const GROUP_VERSION_FOR_UPDATE: &str =
    "SELECT change_seq FROM scim.groups WITH (UPDLOCK, ROWLOCK) WHERE pk = @P1";

/// @P1 tenant, @P2 id (locked, for DELETE).
pub const GROUP_VERSION_BY_ID_FOR_UPDATE: &str =
    "SELECT change_seq FROM scim.groups WITH (UPDLOCK, ROWLOCK) WHERE tenant = @P1 AND id = @P2";

/// Compare-and-swap update of a group's document: @P1 display_name, @P2 display_name_ci,
/// @P3 external_id, @P4 doc, @P5 doc_ci, @P6 change_seq, @P7 now, @P8 pk, @P9 the version read.
pub const UPDATE_GROUP: &str = "UPDATE scim.groups SET display_name = @P1, display_name_ci = @P2, \
     external_id = @P3, doc = @P4, doc_ci = @P5, change_seq = @P6, last_modified = @P7 \
     WHERE pk = @P8 AND change_seq = @P9";

/// A member-only change: @P1 change_seq, @P2 now, @P3 pk.
pub const STAMP_GROUP: &str =
    "UPDATE scim.groups SET change_seq = @P1, last_modified = @P2 WHERE pk = @P3";

/// @P1 tenant, @P2 id.
pub const DELETE_GROUP: &str = "DELETE FROM scim.groups WHERE tenant = @P1 AND id = @P2";

// ---- members --------------------------------------------------------------------------------

/// Stamp every live user member of a group: @P1 change_seq, @P2 tenant, @P3 group id.
pub const STAMP_GROUP_MEMBERS: &str = "UPDATE scim.users SET change_seq = @P1 \
     WHERE tenant = @P2 AND deleted_at IS NULL AND id IN \
     (SELECT member_id FROM scim.group_members WHERE tenant = @P2 AND group_id = @P3 AND member_type = N'User')";

/// @P1 tenant, @P2 group id. Returns the number of rows removed (@@ROWCOUNT via rows affected).
pub const DELETE_ALL_MEMBERS: &str =
    "DELETE FROM scim.group_members WHERE tenant = @P1 AND group_id = @P2";

/// Whether an id is a live user or a group of the tenant: @P1 tenant, @P2 id.
pub const MEMBER_KIND: &str = "SELECT N'User' FROM scim.users WHERE tenant = @P1 AND id = @P2 AND deleted_at IS NULL \
     UNION ALL SELECT N'Group' FROM scim.groups WHERE tenant = @P1 AND id = @P2";

/// Add one member row unless present: @P1 tenant, @P2 group id, @P3 member id, @P4 type.
/// UPDLOCK + HOLDLOCK lock the key (or the gap where it would be), so two concurrent adds of
/// one member give one insert and one no-op instead of a primary key violation.
pub const ADD_MEMBER: &str = "INSERT INTO scim.group_members (tenant, group_id, member_id, member_type) \
     SELECT @P1, @P2, @P3, @P4 WHERE NOT EXISTS (SELECT 1 FROM scim.group_members WITH (UPDLOCK, HOLDLOCK) \
     WHERE tenant = @P1 AND group_id = @P2 AND member_id = @P3)";

/// Remove one member row: @P1 tenant, @P2 group id, @P3 member id. Returns its type.
pub const REMOVE_MEMBER: &str = "DELETE FROM scim.group_members OUTPUT deleted.member_type \
     WHERE tenant = @P1 AND group_id = @P2 AND member_id = @P3";

/// The groups a member leaves get a new version: @P1 change_seq, @P2 now, @P3 tenant, @P4 member id.
pub const STAMP_GROUPS_OF_MEMBER: &str = "UPDATE scim.groups SET change_seq = @P1, last_modified = @P2 \
     WHERE tenant = @P3 AND id IN (SELECT group_id FROM scim.group_members WHERE tenant = @P3 AND member_id = @P4)";

/// @P1 tenant, @P2 member id.
pub const DELETE_MEMBERSHIPS_OF: &str =
    "DELETE FROM scim.group_members WHERE tenant = @P1 AND member_id = @P2";

// ---- reads and lists ------------------------------------------------------------------------

/// SELECT of live resources of `kind` for tenant @P1, aliased `r`: id, doc, change_seq,
/// created, last_modified, related. related is a JSON array of objects — a user's groups
/// ({"id", "name"}) or a group's members ({"id", "type"}) — or NULL when not asked for.
pub fn select_sql(kind: ResourceKind, with_related: bool) -> String {
    let (table, live, related) = match kind {
        ResourceKind::User => (
            "scim.users",
            " AND r.deleted_at IS NULL",
            "ISNULL((SELECT g.id AS id, g.display_name AS name FROM scim.group_members m \
             JOIN scim.groups g ON g.tenant = m.tenant AND g.id = m.group_id \
             WHERE m.tenant = r.tenant AND m.member_id = r.id FOR JSON PATH), N'[]')",
        ),
        ResourceKind::Group => (
            "scim.groups",
            "",
            "ISNULL((SELECT m.member_id AS id, m.member_type AS type FROM scim.group_members m \
             WHERE m.tenant = r.tenant AND m.group_id = r.id FOR JSON PATH), N'[]')",
        ),
    };
    // A typed NULL: a bare NULL column would be an INT to the driver.
    let related = if with_related {
        related
    } else {
        "CAST(NULL AS NVARCHAR(MAX))"
    };
    format!(
        "SELECT r.id, r.doc, r.change_seq, r.created, r.last_modified, {related} \
         FROM {table} r WHERE r.tenant = @P1{live}"
    )
}

/// One resource by id: @P1 tenant, @P2 id.
pub fn get_sql(kind: ResourceKind, with_related: bool) -> String {
    format!("{} AND r.id = @P2", select_sql(kind, with_related))
}

/// The total for a list: binds `cond.params` (or just the tenant).
pub fn count_sql(kind: ResourceKind, cond: Option<&Condition>) -> String {
    let (table, live) = match kind {
        ResourceKind::User => ("scim.users", " AND r.deleted_at IS NULL"),
        ResourceKind::Group => ("scim.groups", ""),
    };
    let filter = cond.map(|c| format!(" AND {}", c.sql)).unwrap_or_default();
    format!("SELECT COUNT_BIG(*) FROM {table} r WHERE r.tenant = @P1{live}{filter}")
}

/// One page: binds `cond.params` (or just the tenant), then the 0-based offset and the count,
/// whose parameter numbers are returned with the SQL.
pub fn page_sql(
    kind: ResourceKind,
    cond: Option<&Condition>,
    sort: Option<&Sort>,
    with_related: bool,
) -> (String, usize) {
    let filter = cond.map(|c| format!(" AND {}", c.sql)).unwrap_or_default();
    let next = cond.map(|c| c.params.len()).unwrap_or(1) + 1;
    let order = match sort {
        Some(s) => format!(
            "{} {}, r.pk",
            s.expr,
            if s.descending { "DESC" } else { "ASC" }
        ),
        None => "r.pk".into(),
    };
    (
        format!(
            "{}{filter} ORDER BY {order} OFFSET @P{next} ROWS FETCH NEXT @P{} ROWS ONLY",
            select_sql(kind, with_related),
            next + 1
        ),
        next,
    )
}

// ---- admin API and provisioning log ---------------------------------------------------------

/// Live active users, live inactive users, groups and memberships of @P1 tenant.
pub const TENANT_COUNTS: &str = "SELECT \
     (SELECT COUNT_BIG(*) FROM scim.users WHERE tenant = @P1 AND deleted_at IS NULL AND active = 1), \
     (SELECT COUNT_BIG(*) FROM scim.users WHERE tenant = @P1 AND deleted_at IS NULL AND active = 0), \
     (SELECT COUNT_BIG(*) FROM scim.groups WHERE tenant = @P1), \
     (SELECT COUNT_BIG(*) FROM scim.group_members WHERE tenant = @P1)";

/// The member count of one group: @P1 tenant, @P2 group id.
pub const MEMBER_COUNT: &str =
    "SELECT COUNT_BIG(*) FROM scim.group_members WHERE tenant = @P1 AND group_id = @P2";

/// Rows per provisioning log INSERT: 9 parameters each, below SQL Server's 2100 per statement.
pub const PROVISIONING_LOG_CHUNK: usize = 200;
const _: () = assert!(PROVISIONING_LOG_CHUNK * 9 <= 2100);

/// Append `rows` provisioning log entries; per row, 9 parameters in this order: tenant, at,
/// request_id, method, path, resource_id, status, duration_ms, error.
pub fn insert_provisioning_log(rows: usize) -> String {
    let values = (0..rows)
        .map(|r| format!("({})", params(r * 9 + 1, 9)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO scim.provisioning_log (tenant, [at], request_id, method, path, resource_id, \
         status, duration_ms, error) VALUES {values}"
    )
}

/// The tenants with provisioning log entries (pruning goes tenant by tenant).
pub const PROVISIONING_LOG_TENANTS: &str = "SELECT DISTINCT tenant FROM scim.provisioning_log";

/// Delete up to @P3 entries of @P1 tenant older than @P2: short statements, short locks.
pub const PRUNE_PROVISIONING_LOG: &str = "DELETE FROM scim.provisioning_log WHERE id IN \
     (SELECT TOP (@P3) id FROM scim.provisioning_log WHERE tenant = @P1 AND [at] < @P2)";

/// A page of a tenant's provisioning log and the number of matches, in one batch of two
/// result sets. @P1 tenant, @P2..@P3 the status range, @P4 since (inclusive, only with
/// `since`), @P5 until (exclusive, only with `until`), @P6 offset, @P7 limit; every parameter
/// is always bound. Rows: id, at, request_id, method, path, resource_id, status, duration_ms,
/// error, newest first.
pub fn provisioning_log_page(since: bool, until: bool) -> String {
    let mut filter = String::from("tenant = @P1 AND status BETWEEN @P2 AND @P3");
    if since {
        filter.push_str(" AND [at] >= @P4");
    }
    if until {
        filter.push_str(" AND [at] < @P5");
    }
    format!(
        "SELECT COUNT_BIG(*) FROM scim.provisioning_log WHERE {filter}; \
         SELECT id, [at], request_id, method, path, resource_id, status, duration_ms, error \
         FROM scim.provisioning_log WHERE {filter} ORDER BY [at] DESC, id DESC \
         OFFSET @P6 ROWS FETCH NEXT @P7 ROWS ONLY"
    )
}

// ---- sync engine: reading staging -----------------------------------------------------------

/// pk, id, user_name, doc, active, deleted, change_seq, groups (JSON array of
/// {"id", "display_name", "external_id"}, absent keys for NULL).
pub const SYNC_USER_COLUMNS: &str = "u.pk, u.id, u.user_name, u.doc, u.active, \
     CAST(CASE WHEN u.deleted_at IS NULL THEN 0 ELSE 1 END AS BIT) AS deleted, u.change_seq, \
     ISNULL((SELECT g.id AS id, g.display_name AS display_name, g.external_id AS external_id \
     FROM scim.group_members m JOIN scim.groups g ON g.tenant = m.tenant AND g.id = m.group_id \
     WHERE m.tenant = u.tenant AND m.member_id = u.id FOR JSON PATH), N'[]') AS groups";

/// Users changed after (@P2 seq, @P3 pk) and at or before @P4 (from [`HIGH_SEQ`]), in change
/// order: @P1 tenant, @P5 limit.
pub static CHANGED_USERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT TOP (@P5) {SYNC_USER_COLUMNS} FROM scim.users u WHERE u.tenant = @P1 \
         AND (u.change_seq > @P2 OR (u.change_seq = @P2 AND u.pk > @P3)) AND u.change_seq <= @P4 \
         ORDER BY u.change_seq, u.pk"
    )
});

/// @P1 tenant, @P2 seq, @P3 pk, @P4 high.
pub const COUNT_CHANGED: &str = "SELECT COUNT_BIG(*) FROM scim.users u WHERE u.tenant = @P1 \
     AND (u.change_seq > @P2 OR (u.change_seq = @P2 AND u.pk > @P3)) AND u.change_seq <= @P4";

/// Users to retry that the watermark (@P2 seq, @P3 pk) has passed, after pk @P4: @P1 tenant, @P5 limit.
pub static RETRY_USERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT TOP (@P5) {SYNC_USER_COLUMNS} FROM sync.retry x \
         JOIN scim.users u ON u.tenant = x.tenant AND u.id = x.user_id \
         WHERE x.tenant = @P1 AND (u.change_seq < @P2 OR (u.change_seq = @P2 AND u.pk <= @P3)) \
         AND u.pk > @P4 ORDER BY u.pk"
    )
});

/// Users whose retention ended: inactive since before @P2 and, when deleted, deleted before it.
const DUE: &str = "u.tenant = @P1 AND u.deactivated_at IS NOT NULL AND u.deactivated_at <= @P2 \
     AND (u.deleted_at IS NULL OR u.deleted_at <= @P2)";

/// Count of due users: @P1 tenant, @P2 cutoff, and with `held` @P3 the run that held them.
pub fn count_due(held: bool) -> String {
    let (join, cond) = held_join(held);
    format!("SELECT COUNT_BIG(*) FROM scim.users u{join} WHERE {DUE}{cond}")
}

/// Due users by pk: @P1 tenant, @P2 cutoff, @P3 after pk, @P4 limit, and with `held` @P5 the run.
pub fn due_users(held: bool) -> String {
    let (join, cond) = held_join(held);
    let join = join.replace("@P3", "@P5");
    format!(
        "SELECT TOP (@P4) {SYNC_USER_COLUMNS} FROM scim.users u{join} WHERE {DUE}{cond} \
         AND u.pk > @P3 ORDER BY u.pk"
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

/// The change sequence of one user (to detect a change since it was read): @P1 tenant, @P2 id.
pub const USER_SEQ_FOR_UPDATE: &str =
    "SELECT change_seq FROM scim.users WITH (UPDLOCK, ROWLOCK) WHERE tenant = @P1 AND id = @P2";

/// Purge a user from staging (memberships first; emails go by cascade): @P1 tenant, @P2 id.
pub const PURGE_USER: &str = "DELETE FROM scim.users WHERE tenant = @P1 AND id = @P2";

/// @P1 tenant, @P2 member id.
pub const COUNT_MEMBERSHIPS: &str =
    "SELECT COUNT_BIG(*) FROM scim.group_members WHERE tenant = @P1 AND member_id = @P2";

/// [`HIGH_SEQ`] in a transaction of its own (the lock goes with it).
pub static HIGH_SEQ_IN_TRANSACTION: LazyLock<String> =
    LazyLock::new(|| format!("BEGIN TRANSACTION; {HIGH_SEQ}; COMMIT TRANSACTION"));

// ---- sync engine: state ---------------------------------------------------------------------

/// @P1 tenant, @P2 JSON array of user ids.
pub const LINKS_FOR_USERS: &str = "SELECT l.user_id, l.app_key, l.fingerprint, l.applied_roles, l.fields, l.state \
     FROM sync.links l WHERE l.tenant = @P1 AND l.user_id IN \
     (SELECT j.value COLLATE Latin1_General_100_BIN2 FROM OPENJSON(@P2) j)";

/// @P1 tenant.
pub const COUNT_LINKS: &str = "SELECT COUNT_BIG(*) FROM sync.links WHERE tenant = @P1";

/// Insert or replace a link: @P1 tenant, @P2 user id, @P3 app key, @P4 fingerprint,
/// @P5 applied roles (JSON), @P6 fields (JSON), @P7 state, @P8 now.
pub const UPSERT_LINK: &str = "UPDATE sync.links WITH (UPDLOCK, HOLDLOCK) SET app_key = @P3, fingerprint = @P4, \
     applied_roles = @P5, fields = @P6, state = @P7, updated_at = @P8 WHERE tenant = @P1 AND user_id = @P2; \
     IF @@ROWCOUNT = 0 INSERT INTO sync.links (tenant, user_id, app_key, fingerprint, applied_roles, fields, state, updated_at) \
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

/// A batch's link writes as rows: @P2 is a JSON array of objects with user_id, app_key,
/// fingerprint, applied_roles and fields (JSON text), state.
const LINK_ROWS: &str = "OPENJSON(@P2) WITH (user_id NVARCHAR(64) '$.user_id', \
     app_key NVARCHAR(450) '$.app_key', fingerprint NVARCHAR(128) '$.fingerprint', \
     applied_roles NVARCHAR(MAX) '$.applied_roles', fields NVARCHAR(MAX) '$.fields', \
     state NVARCHAR(16) '$.state') j";

/// Insert or replace a batch's links in two statements: @P1 tenant, @P2 the rows (see
/// LINK_ROWS), @P3 now. The hints lock the keys (and the gaps of the new ones) until the
/// transaction ends.
pub static UPSERT_LINKS: LazyLock<String> = LazyLock::new(|| {
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
pub const DELETE_LINK: &str = "DELETE FROM sync.links WHERE tenant = @P1 AND user_id = @P2";

/// Whether another user's link holds the key: @P1 tenant, @P2 app key, @P3 user id.
pub const APP_KEY_TAKEN: &str = "SELECT COUNT_BIG(*) FROM sync.links \
     WHERE tenant = @P1 AND app_key = @P2 AND user_id <> @P3";

/// (change_seq, last_pk) of the tenant: @P1 tenant.
pub const GET_WATERMARK: &str =
    "SELECT change_seq, last_pk FROM sync.watermarks WHERE tenant = @P1";

/// Move the watermark forward to (@P2 seq, @P3 pk), never back: @P1 tenant, @P4 now.
/// (Upserts here are UPDATE … WITH (UPDLOCK, HOLDLOCK) then INSERT: the hints lock the key, or
/// the gap where it would go, until the transaction ends, so concurrent upserts of one key
/// serialise into one insert and updates. MERGE would do the same with more known defects.)
pub const ADVANCE_WATERMARK: &str = "UPDATE sync.watermarks WITH (UPDLOCK, HOLDLOCK) \
     SET change_seq = @P2, last_pk = @P3, updated_at = @P4 \
     WHERE tenant = @P1 AND (@P2 > change_seq OR (@P2 = change_seq AND @P3 > last_pk)); \
     IF @@ROWCOUNT = 0 INSERT INTO sync.watermarks (tenant, change_seq, last_pk, updated_at) \
     SELECT @P1, @P2, @P3, @P4 WHERE NOT EXISTS \
     (SELECT 1 FROM sync.watermarks WITH (UPDLOCK, HOLDLOCK) WHERE tenant = @P1)";

/// Record a failed user: @P1 tenant, @P2 user id, @P3 error, @P4 now.
pub const UPSERT_RETRY: &str = "UPDATE sync.retry WITH (UPDLOCK, HOLDLOCK) SET attempts = attempts + 1, \
     last_error = @P3, last_failed_at = @P4 WHERE tenant = @P1 AND user_id = @P2; \
     IF @@ROWCOUNT = 0 INSERT INTO sync.retry (tenant, user_id, attempts, last_error, first_failed_at, last_failed_at) \
     VALUES (@P1, @P2, 1, @P3, @P4, @P4)";

/// A batch's failed users as rows: @P2 is a JSON array of {"user_id", "error"}.
const RETRY_ROWS: &str =
    "OPENJSON(@P2) WITH (user_id NVARCHAR(64) '$.user_id', error NVARCHAR(MAX) '$.error') j";

/// Record a batch's failed users: @P1 tenant, @P2 the rows (see RETRY_ROWS), @P3 now.
pub static UPSERT_RETRIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE x SET attempts = x.attempts + 1, last_error = j.error, last_failed_at = @P3 \
         FROM sync.retry x WITH (UPDLOCK, HOLDLOCK) JOIN {RETRY_ROWS} \
         ON x.user_id = j.user_id COLLATE Latin1_General_100_BIN2 WHERE x.tenant = @P1; \
         INSERT INTO sync.retry (tenant, user_id, attempts, last_error, first_failed_at, last_failed_at) \
         SELECT @P1, j.user_id, 1, j.error, @P3, @P3 FROM {RETRY_ROWS} \
         WHERE NOT EXISTS (SELECT 1 FROM sync.retry x WITH (UPDLOCK, HOLDLOCK) \
         WHERE x.tenant = @P1 AND x.user_id = j.user_id COLLATE Latin1_General_100_BIN2)"
    )
});

/// Retry rows of users no longer in staging: @P1 tenant.
pub const DROP_ORPHAN_RETRIES: &str = "DELETE FROM sync.retry WHERE tenant = @P1 \
     AND user_id NOT IN (SELECT id FROM scim.users WHERE tenant = @P1)";

/// @P1 tenant, @P2 JSON array of user ids.
pub const CLEAR_RETRIES: &str = "DELETE FROM sync.retry WHERE tenant = @P1 AND user_id IN \
     (SELECT j.value COLLATE Latin1_General_100_BIN2 FROM OPENJSON(@P2) j)";

/// @P1 tenant, @P2 user id.
pub const DELETE_RETRY: &str = "DELETE FROM sync.retry WHERE tenant = @P1 AND user_id = @P2";

// ---- sync engine: lease ---------------------------------------------------------------------

/// Take the tenant's lease unless another holder has an unexpired one: @P1 tenant, @P2 holder,
/// @P3 now, @P4 expires. Returns one row, `taken` (BIT). The UPDLOCK/HOLDLOCK hints lock the
/// key range, so two processes racing for a free tenant give one insert and one no-op.
pub const ACQUIRE_LEASE: &str = "DECLARE @taken INT; \
     UPDATE sync.leases WITH (UPDLOCK, HOLDLOCK) SET holder = @P2, acquired_at = @P3, expires_at = @P4, run_id = NULL \
     WHERE tenant = @P1 AND expires_at <= @P3; \
     SET @taken = @@ROWCOUNT; \
     IF @taken = 0 BEGIN \
     INSERT INTO sync.leases (tenant, holder, acquired_at, expires_at) SELECT @P1, @P2, @P3, @P4 \
     WHERE NOT EXISTS (SELECT 1 FROM sync.leases WITH (UPDLOCK, HOLDLOCK) WHERE tenant = @P1); \
     SET @taken = @@ROWCOUNT; \
     END; \
     SELECT CAST(@taken AS BIT) AS taken";

/// Extend the lease: @P1 expires, @P2 tenant, @P3 holder. No row: the lease was lost.
pub const RENEW_LEASE: &str =
    "UPDATE sync.leases SET expires_at = @P1 WHERE tenant = @P2 AND holder = @P3";

/// @P1 run id, @P2 tenant, @P3 holder.
pub const LEASE_RUN: &str =
    "UPDATE sync.leases SET run_id = @P1 WHERE tenant = @P2 AND holder = @P3";

/// @P1 tenant, @P2 holder.
pub const RELEASE_LEASE: &str = "DELETE FROM sync.leases WHERE tenant = @P1 AND holder = @P2";

// ---- sync engine: ledger --------------------------------------------------------------------

/// @P1 tenant, @P2 trigger, @P3 dry_run, @P4 full, @P5 status, @P6 started_at, @P7 ended_at,
/// @P8 watermark_from, @P9 approves_run. Returns id.
pub const INSERT_RUN: &str = "INSERT INTO sync.runs (tenant, [trigger], dry_run, [full], status, started_at, ended_at, \
     watermark_from, approves_run) OUTPUT inserted.id VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9)";

/// Runs left running by a holder that stopped: @P1 now, @P2 tenant.
pub const ABANDON_STALE_RUNS: &str = "UPDATE sync.runs SET status = N'failed', ended_at = @P1, \
     error = N'abandoned: the process running it stopped before it finished' \
     WHERE tenant = @P2 AND status = N'running' AND dry_run = 0";

/// @P1 status, @P2 ended_at, @P3…@P10 created, updated, unchanged, roles_added, roles_removed,
/// deactivated, offboarded, failed, @P11 watermark_to, @P12 error, @P13 id.
pub const UPDATE_RUN: &str = "UPDATE sync.runs SET status = @P1, ended_at = @P2, created = @P3, updated = @P4, \
     unchanged = @P5, roles_added = @P6, roles_removed = @P7, deactivated = @P8, offboarded = @P9, \
     failed = @P10, watermark_to = @P11, error = @P12 WHERE id = @P13";

/// @P1 id.
pub const GET_RUN: &str =
    "SELECT tenant, status, dry_run, approved_at FROM sync.runs WHERE id = @P1";

/// @P1 approved_at, @P2 approving run, @P3 id.
pub const APPROVE_RUN: &str =
    "UPDATE sync.runs SET approved_at = @P1, approved_by = @P2 WHERE id = @P3";

/// @P1 run id, @P2 user id, @P3 user name, @P4 app key, @P5 outcome, @P6 changes,
/// @P7 roles added, @P8 roles removed, @P9 error.
pub const INSERT_RUN_ITEM: &str = "INSERT INTO sync.run_items (run_id, user_id, user_name, app_key, outcome, changes, \
     roles_added, roles_removed, error) VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9)";

/// A batch's ledger items in one statement, ids in array order: @P1 run id, @P2 a JSON array
/// of objects with user_id, user_name, app_key, outcome, changes, roles_added, roles_removed
/// (JSON text or null) and error.
pub const INSERT_RUN_ITEMS: &str = "INSERT INTO sync.run_items (run_id, user_id, user_name, app_key, outcome, changes, \
     roles_added, roles_removed, error) \
     SELECT @P1, j.user_id, j.user_name, j.app_key, j.outcome, j.changes, j.roles_added, j.roles_removed, j.error \
     FROM OPENJSON(@P2) a CROSS APPLY OPENJSON(a.value) WITH (user_id NVARCHAR(64) '$.user_id', \
     user_name NVARCHAR(256) '$.user_name', app_key NVARCHAR(450) '$.app_key', outcome NVARCHAR(32) '$.outcome', \
     changes NVARCHAR(MAX) '$.changes', roles_added NVARCHAR(MAX) '$.roles_added', \
     roles_removed NVARCHAR(MAX) '$.roles_removed', error NVARCHAR(MAX) '$.error') j \
     ORDER BY CAST(a.[key] AS INT)";

// ---- sync engine: offboarding queue ---------------------------------------------------------

/// Queue an offboarding unless one is queued for the user: @P1 tenant, @P2 user id,
/// @P3 user name, @P4 app key, @P5 action (JSON), @P6 roles (JSON), @P7 now, @P8 run id.
pub const QUEUE_OFFBOARDING: &str = "INSERT INTO sync.offboarding (tenant, user_id, user_name, app_key, action, roles, queued_at, run_id) \
     SELECT @P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8 WHERE NOT EXISTS \
     (SELECT 1 FROM sync.offboarding WITH (UPDLOCK, HOLDLOCK) WHERE tenant = @P1 AND user_id = @P2)";

/// @P1 tenant, @P2 after id, @P3 limit.
pub const PENDING_OFFBOARDINGS: &str = "SELECT TOP (@P3) id, user_id, user_name, app_key, action, roles \
     FROM sync.offboarding WHERE tenant = @P1 AND id > @P2 ORDER BY id";

/// @P1 id.
pub const DELETE_OFFBOARDING: &str = "DELETE FROM sync.offboarding WHERE id = @P1";

/// @P1 error, @P2 id.
pub const OFFBOARDING_FAILED: &str =
    "UPDATE sync.offboarding SET attempts = attempts + 1, last_error = @P1 WHERE id = @P2";

// ---- application database -------------------------------------------------------------------

/// An identifier (`name` or `schema.name`) from a mapping, bracket-quoted for T-SQL. Anything
/// but ASCII letters, digits and `_` is refused, whatever the mapping checked (so a `]`, which
/// would be escaped as `]]`, never gets this far).
pub fn quote_ident(ident: &str) -> Option<String> {
    crate::target::quote_parts(ident, '[', ']')
}

/// Upsert one application row by key, as one batch: @P1 the key, @P2… the field values in
/// `columns` order. Returns one row, `created` (BIT). UPDATE WITH (UPDLOCK, HOLDLOCK) locks the
/// key — or, when there is no row yet, the key range where it would go — until the transaction
/// ends, so of two concurrent upserts of one key the second waits and then updates: one insert,
/// one update, never two inserts or a key violation. `table`, `key` and `columns` are quoted.
pub fn upsert_user(table: &str, key: &str, columns: &[String]) -> String {
    let first = if columns.is_empty() {
        format!(
            "SELECT @updated = COUNT(*) FROM {table} WITH (UPDLOCK, HOLDLOCK) WHERE {key} = @P1;"
        )
    } else {
        let sets = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = @P{}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE {table} WITH (UPDLOCK, HOLDLOCK) SET {sets} WHERE {key} = @P1; SET @updated = @@ROWCOUNT;"
        )
    };
    let mut names = vec![key.to_string()];
    names.extend(columns.iter().cloned());
    format!(
        "DECLARE @updated INT; {first} \
         IF @updated = 0 INSERT INTO {table} ({}) VALUES ({}); \
         SELECT CAST(CASE WHEN @updated = 0 THEN 1 ELSE 0 END AS BIT) AS created",
        names.join(", "),
        params(1, names.len())
    )
}

/// Rows under a key (locked): @P1 key.
pub fn count_key(table: &str, key: &str) -> String {
    format!("SELECT COUNT(*) FROM {table} WITH (UPDLOCK, HOLDLOCK) WHERE {key} = @P1")
}

/// Move a row, or role rows, to a new key: @P1 new key, @P2 old key.
pub fn rekey(table: &str, key: &str) -> String {
    format!("UPDATE {table} SET {key} = @P1 WHERE {key} = @P2")
}

/// Assign one role unless assigned: @P1 user key, @P2 role.
pub fn add_role(table: &str, user: &str, role: &str) -> String {
    format!(
        "INSERT INTO {table} ({user}, {role}) SELECT @P1, @P2 WHERE NOT EXISTS \
         (SELECT 1 FROM {table} WITH (UPDLOCK, HOLDLOCK) WHERE {user} = @P1 AND {role} = @P2)"
    )
}

/// Remove one role: @P1 user key, @P2 role.
pub fn remove_role(table: &str, user: &str, role: &str) -> String {
    format!("DELETE FROM {table} WHERE {user} = @P1 AND {role} = @P2")
}

/// Offboarding by deletion: @P1 key.
pub fn delete_row(table: &str, key: &str) -> String {
    format!("DELETE FROM {table} WHERE {key} = @P1")
}

/// Offboarding by update: @P1… the values in `columns` order, then the key.
pub fn update_row(table: &str, key: &str, columns: &[String]) -> String {
    let sets = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = @P{}", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE {table} SET {sets} WHERE {key} = @P{}",
        columns.len() + 1
    )
}

/// Savepoints: a failed user rolls back to its own savepoint, not the batch. @P-free: the
/// name is a constant.
pub const SAVEPOINT: &str = "SAVE TRANSACTION scim_bridge_user";
pub const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TRANSACTION scim_bridge_user";

/// An application batch's transaction. XACT_ABORT is off on these connections (the pool of
/// an application database is its own): an error then fails its statement, not the whole
/// transaction, so a failed user can be rolled back to its savepoint. Some errors (in a
/// trigger, a deadlock) still end the transaction: [`XACT_STATE`] tells.
pub const APP_BEGIN: &str = "SET XACT_ABORT OFF; BEGIN TRANSACTION";
pub const APP_COMMIT: &str = "COMMIT TRANSACTION";
/// Roll back whatever is still open (nothing, when an error already ended the transaction).
pub const APP_ROLLBACK: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION";
/// 1: the transaction can go on; -1: an error doomed it (only a rollback is possible);
/// 0: there is none (an error rolled it back).
pub const XACT_STATE: &str = "SELECT CAST(XACT_STATE() AS INT)";

/// How many user tables the application database has (an empty one gets the example schema).
pub const COUNT_APP_TABLES: &str = "SELECT COUNT(*) FROM sys.tables WHERE is_ms_shipped = 0";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scim::schema::{DEFAULT_CUSTOM_SCHEMA, ResourceType};
    use crate::store::mssql::filter_sql;
    use sqlparser::dialect::MsSqlDialect;
    use sqlparser::parser::Parser;
    use std::time::Duration;

    /// Every statement the backend can issue, by name.
    fn all_statements() -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = [
            ("CONNECTION_INIT", CONNECTION_INIT),
            ("PING", PING),
            ("CHECKOUT", CHECKOUT),
            ("MIGRATIONS_TABLE", MIGRATIONS_TABLE),
            ("MIGRATION_LOCK", MIGRATION_LOCK),
            ("APPLIED_MIGRATIONS", APPLIED_MIGRATIONS),
            ("RECORD_MIGRATION", RECORD_MIGRATION),
            ("NEXT_SEQ", NEXT_SEQ),
            ("HIGH_SEQ", HIGH_SEQ),
            ("HIGH_SEQ_IN_TRANSACTION", HIGH_SEQ_IN_TRANSACTION.as_str()),
            ("UPSERT_LINKS", UPSERT_LINKS.as_str()),
            ("UPSERT_RETRIES", UPSERT_RETRIES.as_str()),
            ("INSERT_RUN_ITEMS", INSERT_RUN_ITEMS),
            ("INSERT_USER", INSERT_USER.as_str()),
            ("UPDATE_USER", UPDATE_USER.as_str()),
            ("CURRENT_USER", CURRENT_USER),
            ("USER_VERSION_FOR_UPDATE", USER_VERSION_FOR_UPDATE),
            ("SOFT_DELETE_USER", SOFT_DELETE_USER),
            ("DELETE_USER_EMAILS", DELETE_USER_EMAILS),
            ("INSERT_USER_EMAILS", INSERT_USER_EMAILS),
            ("STAMP_USER", STAMP_USER),
            ("INSERT_GROUP", INSERT_GROUP),
            ("CURRENT_GROUP", CURRENT_GROUP),
            ("GROUP_VERSION_FOR_UPDATE", GROUP_VERSION_FOR_UPDATE),
            (
                "GROUP_VERSION_BY_ID_FOR_UPDATE",
                GROUP_VERSION_BY_ID_FOR_UPDATE,
            ),
            ("UPDATE_GROUP", UPDATE_GROUP),
            ("STAMP_GROUP", STAMP_GROUP),
            ("DELETE_GROUP", DELETE_GROUP),
            ("STAMP_GROUP_MEMBERS", STAMP_GROUP_MEMBERS),
            ("DELETE_ALL_MEMBERS", DELETE_ALL_MEMBERS),
            ("MEMBER_KIND", MEMBER_KIND),
            ("ADD_MEMBER", ADD_MEMBER),
            ("REMOVE_MEMBER", REMOVE_MEMBER),
            ("STAMP_GROUPS_OF_MEMBER", STAMP_GROUPS_OF_MEMBER),
            ("DELETE_MEMBERSHIPS_OF", DELETE_MEMBERSHIPS_OF),
            ("CHANGED_USERS", CHANGED_USERS.as_str()),
            ("COUNT_CHANGED", COUNT_CHANGED),
            ("RETRY_USERS", RETRY_USERS.as_str()),
            ("USER_SEQ_FOR_UPDATE", USER_SEQ_FOR_UPDATE),
            ("PURGE_USER", PURGE_USER),
            ("COUNT_MEMBERSHIPS", COUNT_MEMBERSHIPS),
            ("LINKS_FOR_USERS", LINKS_FOR_USERS),
            ("COUNT_LINKS", COUNT_LINKS),
            ("UPSERT_LINK", UPSERT_LINK),
            ("DELETE_LINK", DELETE_LINK),
            ("APP_KEY_TAKEN", APP_KEY_TAKEN),
            ("GET_WATERMARK", GET_WATERMARK),
            ("ADVANCE_WATERMARK", ADVANCE_WATERMARK),
            ("UPSERT_RETRY", UPSERT_RETRY),
            ("DROP_ORPHAN_RETRIES", DROP_ORPHAN_RETRIES),
            ("CLEAR_RETRIES", CLEAR_RETRIES),
            ("DELETE_RETRY", DELETE_RETRY),
            ("ACQUIRE_LEASE", ACQUIRE_LEASE),
            ("RENEW_LEASE", RENEW_LEASE),
            ("LEASE_RUN", LEASE_RUN),
            ("RELEASE_LEASE", RELEASE_LEASE),
            ("INSERT_RUN", INSERT_RUN),
            ("ABANDON_STALE_RUNS", ABANDON_STALE_RUNS),
            ("UPDATE_RUN", UPDATE_RUN),
            ("GET_RUN", GET_RUN),
            ("APPROVE_RUN", APPROVE_RUN),
            ("INSERT_RUN_ITEM", INSERT_RUN_ITEM),
            ("QUEUE_OFFBOARDING", QUEUE_OFFBOARDING),
            ("PENDING_OFFBOARDINGS", PENDING_OFFBOARDINGS),
            ("DELETE_OFFBOARDING", DELETE_OFFBOARDING),
            ("OFFBOARDING_FAILED", OFFBOARDING_FAILED),
            ("SAVEPOINT", SAVEPOINT),
            ("ROLLBACK_TO_SAVEPOINT", ROLLBACK_TO_SAVEPOINT),
            ("COUNT_APP_TABLES", COUNT_APP_TABLES),
            ("APP_BEGIN", APP_BEGIN),
            ("APP_COMMIT", APP_COMMIT),
            ("APP_ROLLBACK", APP_ROLLBACK),
            ("XACT_STATE", XACT_STATE),
            ("TENANT_COUNTS", TENANT_COUNTS),
            ("MEMBER_COUNT", MEMBER_COUNT),
            ("PROVISIONING_LOG_TENANTS", PROVISIONING_LOG_TENANTS),
            ("PRUNE_PROVISIONING_LOG", PRUNE_PROVISIONING_LOG),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
        for rows in [1, 3, PROVISIONING_LOG_CHUNK] {
            out.push((
                format!("insert_provisioning_log({rows})"),
                insert_provisioning_log(rows),
            ));
        }
        for since in [false, true] {
            for until in [false, true] {
                out.push((
                    format!("provisioning_log_page({since}, {until})"),
                    provisioning_log_page(since, until),
                ));
            }
        }
        for held in [false, true] {
            out.push((format!("count_due({held})"), count_due(held)));
            out.push((format!("due_users({held})"), due_users(held)));
        }
        for kind in [ResourceKind::User, ResourceKind::Group] {
            for rel in [false, true] {
                out.push((format!("get_sql({kind:?}, {rel})"), get_sql(kind, rel)));
                out.push((
                    format!("page_sql({kind:?}, {rel})"),
                    page_sql(kind, None, None, rel).0,
                ));
            }
            out.push((format!("count_sql({kind:?})"), count_sql(kind, None)));
        }
        let (t, k) = (
            quote_ident("dbo.scifeon_users").unwrap(),
            quote_ident("UserName").unwrap(),
        );
        let cols = vec![
            quote_ident("FirstName").unwrap(),
            quote_ident("IsActive").unwrap(),
        ];
        let (rt, ru, rr) = (
            quote_ident("user_roles").unwrap(),
            quote_ident("user_key").unwrap(),
            quote_ident("role").unwrap(),
        );
        out.extend([
            ("upsert_user".into(), upsert_user(&t, &k, &cols)),
            ("upsert_user(no columns)".into(), upsert_user(&t, &k, &[])),
            ("count_key".into(), count_key(&t, &k)),
            ("rekey".into(), rekey(&t, &k)),
            ("add_role".into(), add_role(&rt, &ru, &rr)),
            ("remove_role".into(), remove_role(&rt, &ru, &rr)),
            ("delete_row".into(), delete_row(&t, &k)),
            ("update_row".into(), update_row(&t, &k, &cols)),
        ]);
        // Every filter translation, in the list statements it is used in.
        let user = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        let sort = Sort {
            expr: filter_sql::sort_expression(&user, "name.familyName").unwrap(),
            descending: true,
        };
        for (c, (kind, f)) in filter_sql::tests::sample_translations()
            .iter()
            .zip(filter_sql::tests::SAMPLES)
        {
            out.push((format!("count_sql [{f}]"), count_sql(*kind, Some(c))));
            let s = (*kind == ResourceKind::User).then_some(&sort);
            out.push((
                format!("page_sql [{f}]"),
                page_sql(*kind, Some(c), s, true).0,
            ));
        }
        out
    }

    fn sql_files() -> Vec<(String, String)> {
        let mut out = vec![];
        for dir in ["sql/mssql", "sql/app"] {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.to_string_lossy().ends_with(".sql")
                        && (dir == "sql/mssql" || p.to_string_lossy().ends_with(".mssql.sql"))
                })
                .collect();
            entries.sort();
            for p in entries {
                let text = std::fs::read_to_string(&p).unwrap();
                for (i, b) in crate::store::mssql::migrate::batches(&text)
                    .into_iter()
                    .enumerate()
                {
                    out.push((format!("{} batch {}", p.display(), i + 1), b));
                }
            }
        }
        out
    }

    pub(crate) fn parse(sql: &str) -> Result<(), String> {
        Parser::parse_sql(&MsSqlDialect {}, &known_gaps(sql))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Valid T-SQL that sqlparser 0.64 cannot parse, rewritten to an equivalent it can, each
    /// rewrite as narrow as the construct (the rest of the statement is still checked):
    /// - `FETCH NEXT @Pn ROWS ONLY`: T-SQL takes a parameter there, sqlparser only a literal;
    /// - `CREATE CLUSTERED INDEX`: sqlparser knows no CLUSTERED/NONCLUSTERED on CREATE INDEX;
    /// - `NEXT VALUE FOR scim.change_seq`: sqlparser has no sequence expression; the one
    ///   sequence is replaced by a scalar subquery over it.
    ///
    /// Statements it cannot parse at all are compared whole with [`UNPARSEABLE`].
    fn known_gaps(sql: &str) -> String {
        let mut out = sql
            .replace("CREATE CLUSTERED INDEX ", "CREATE INDEX ")
            .replace(
                "NEXT VALUE FOR scim.change_seq",
                "(SELECT current_value FROM sys.sequences)",
            );
        while let Some(at) = out.find("FETCH NEXT @P") {
            let rest = &out[at + "FETCH NEXT @P".len()..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 || !rest[digits..].starts_with(" ROWS ONLY") {
                break;
            }
            out.replace_range(at..at + "FETCH NEXT @P".len() + digits, "FETCH NEXT 1");
        }
        out
    }

    /// Savepoint statements: sqlparser has no SAVE TRANSACTION and no ROLLBACK TRANSACTION
    /// with a savepoint name. These exact texts are allowed to fail, nothing else.
    pub(crate) const UNPARSEABLE: &[&str] = &[
        "SAVE TRANSACTION scim_bridge_user",
        "ROLLBACK TRANSACTION scim_bridge_user",
    ];

    #[test]
    fn the_known_gaps_are_narrow() {
        assert_eq!(
            known_gaps("SELECT a FROM t ORDER BY a OFFSET @P3 ROWS FETCH NEXT @P4 ROWS ONLY"),
            "SELECT a FROM t ORDER BY a OFFSET @P3 ROWS FETCH NEXT 1 ROWS ONLY"
        );
        // Anything else that does not parse still fails.
        assert!(parse("SELECT a FROM t ORDER BY a OFFSET @P3 ROWS FETCH NEXT @P4 ROWS").is_err());
        assert!(parse("SELEC 1").is_err());
        assert!(parse("UPDATE t SET a = WHERE b = 1").is_err());
        for s in UNPARSEABLE {
            assert!(
                parse(s).is_err(),
                "{s} parses now: remove it from UNPARSEABLE"
            );
        }
        assert_eq!(SAVEPOINT, UNPARSEABLE[0]);
        assert_eq!(ROLLBACK_TO_SAVEPOINT, UNPARSEABLE[1]);
    }

    #[test]
    fn provisioning_log_inserts_number_their_parameters_row_by_row() {
        assert_eq!(
            insert_provisioning_log(2),
            "INSERT INTO scim.provisioning_log (tenant, [at], request_id, method, path, \
             resource_id, status, duration_ms, error) VALUES (@P1, @P2, @P3, @P4, @P5, @P6, \
             @P7, @P8, @P9), (@P10, @P11, @P12, @P13, @P14, @P15, @P16, @P17, @P18)"
        );
        let page = provisioning_log_page(false, true);
        assert!(
            page.contains("[at] < @P5") && !page.contains("@P4"),
            "{page}"
        );
    }

    /// The distinct @Pn numbers a statement uses, in ascending order.
    fn param_numbers(sql: &str) -> Vec<usize> {
        let mut out: Vec<usize> = sql
            .split("@P")
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Parameters are bound by position: a statement that skipped a number would read a value
    /// bound for another. Every statement uses @P1…@Pn without a gap (the provisioning log
    /// page binds its optional bounds whether it uses them or not).
    #[test]
    fn every_statement_numbers_its_parameters_without_a_gap() {
        let mut failures = vec![];
        for (name, sql) in all_statements() {
            if name.starts_with("provisioning_log_page") {
                continue;
            }
            let n = param_numbers(&sql);
            if n != (1..=n.len()).collect::<Vec<_>>() {
                failures.push(format!("{name}: {n:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// How many parameters the sync engine binds for each of its statements
    /// (src/sync/staging/mssql.rs), against the numbers the statement uses.
    #[test]
    fn the_sync_engine_statements_take_as_many_parameters_as_it_binds() {
        let engine: [(&str, &str, usize); 34] = [
            ("GET_WATERMARK", GET_WATERMARK, 1),
            ("COUNT_CHANGED", COUNT_CHANGED, 4),
            ("CHANGED_USERS", &CHANGED_USERS, 5),
            ("RETRY_USERS", &RETRY_USERS, 5),
            ("LINKS_FOR_USERS", LINKS_FOR_USERS, 2),
            ("COUNT_LINKS", COUNT_LINKS, 1),
            ("PENDING_OFFBOARDINGS", PENDING_OFFBOARDINGS, 3),
            ("GET_RUN", GET_RUN, 1),
            ("INSERT_RUN_ITEMS", INSERT_RUN_ITEMS, 2),
            ("UPSERT_LINKS", &UPSERT_LINKS, 3),
            ("UPSERT_RETRIES", &UPSERT_RETRIES, 3),
            ("CLEAR_RETRIES", CLEAR_RETRIES, 2),
            ("ADVANCE_WATERMARK", ADVANCE_WATERMARK, 4),
            ("ACQUIRE_LEASE", ACQUIRE_LEASE, 4),
            ("RENEW_LEASE", RENEW_LEASE, 3),
            ("RELEASE_LEASE", RELEASE_LEASE, 2),
            ("LEASE_RUN", LEASE_RUN, 3),
            ("ABANDON_STALE_RUNS", ABANDON_STALE_RUNS, 2),
            ("DROP_ORPHAN_RETRIES", DROP_ORPHAN_RETRIES, 1),
            ("INSERT_RUN", INSERT_RUN, 9),
            ("UPDATE_RUN", UPDATE_RUN, 13),
            ("APPROVE_RUN", APPROVE_RUN, 3),
            ("INSERT_RUN_ITEM", INSERT_RUN_ITEM, 9),
            ("USER_SEQ_FOR_UPDATE", USER_SEQ_FOR_UPDATE, 2),
            ("APP_KEY_TAKEN", APP_KEY_TAKEN, 3),
            ("QUEUE_OFFBOARDING", QUEUE_OFFBOARDING, 8),
            ("COUNT_MEMBERSHIPS", COUNT_MEMBERSHIPS, 2),
            ("NEXT_SEQ", NEXT_SEQ, 0),
            ("HIGH_SEQ_IN_TRANSACTION", &HIGH_SEQ_IN_TRANSACTION, 0),
            ("STAMP_GROUPS_OF_MEMBER", STAMP_GROUPS_OF_MEMBER, 4),
            ("DELETE_MEMBERSHIPS_OF", DELETE_MEMBERSHIPS_OF, 2),
            ("PURGE_USER", PURGE_USER, 2),
            ("DELETE_RETRY", DELETE_RETRY, 2),
            ("DELETE_LINK", DELETE_LINK, 2),
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
        // The run is the last parameter of the held form.
        assert!(due_users(true).contains("i.run_id = @P5"));
        assert!(count_due(true).contains("i.run_id = @P3"));
    }

    /// The milliseconds of a statement's `@LockTimeout`.
    fn lock_timeout(sql: &str) -> Duration {
        let rest = sql.split("@LockTimeout = ").nth(1).unwrap();
        let ms: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Duration::from_millis(ms.parse().unwrap())
    }

    /// A change sequence lock not granted in time fails on the server (THROW), leaving the
    /// connection usable, before the default command timeout gives up on the client side.
    #[test]
    fn change_sequence_lock_waits_end_before_the_default_command_timeout() {
        let config =
            crate::config::MssqlConfig::parse("Server=h;Database=d;User Id=u;Password=p").unwrap();
        let command = config.command_timeout.unwrap();
        for sql in [NEXT_SEQ, HIGH_SEQ, HIGH_SEQ_IN_TRANSACTION.as_str()] {
            let wait = lock_timeout(sql);
            assert!(
                wait + Duration::from_secs(5) <= command,
                "{wait:?} vs {command:?}"
            );
        }
    }

    #[test]
    fn every_statement_and_filter_translation_parses_as_t_sql() {
        let (statements, files) = (all_statements(), sql_files());
        assert!(statements.len() > 100, "{}", statements.len());
        assert!(
            files.len() >= 12,
            "the migrations and the example schema: {}",
            files.len()
        );
        let mut failures = vec![];
        for (name, sql) in statements.into_iter().chain(files) {
            if UNPARSEABLE.contains(&sql.as_str()) {
                continue;
            }
            if let Err(e) = parse(&sql) {
                failures.push(format!("{name}: {e}\n    {sql}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
