//! The SCIM store on SQL Server staging (schema `scim`): the same operations as SQLite's, on
//! the pool, with their T-SQL here.
//!
//! Writes run in one transaction each (XACT_ABORT ON: any error rolls the whole write back).
//! Updates are optimistic like on SQLite: read, change, then a compare-and-swap on the version
//! inside the transaction, starting over when another writer came first. Every write takes its
//! change sequence value under the shared application lock of [`super::seq`].
//!
//! Parameters are `@P1…` (tiberius sends a statement with parameters through sp_executesql, so
//! a parameter may be named more than once and a batch may hold several statements). Each
//! constant documents its parameters in order.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tiberius::{Query, Row};

use super::MssqlStaging;
use super::admin::insert_log_rows;
use super::filter_sql::{self, Condition};
use super::pool::{Client, MssqlPool, transaction};
use super::rows::{
    self, Param, SqlError, execute, first, int, naive, opt_text, params, results, text,
};
use super::seq::next_seq;
use crate::db::{Sort, translate};
use crate::scim::ScimError;
use crate::scim::patch::MemberOp;
use crate::scim::resource::fold_case;
use crate::scim::schema::{ResourceKind, ResourceType};
use crate::store::update::{self, Current, GroupUpdate, UserUpdate, check_version, group_columns};
use crate::store::{
    GroupChange, GroupChangeFn, ListQuery, Page, Related, RequestLog, ScimStore, StoreError,
    Stored, UserChange, UserColumns, format_time,
};

/// Optimistic read-modify-write gives up after this many concurrent changes of one resource.
const MAX_ATTEMPTS: usize = 8;

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

// ---- users ----------------------------------------------------------------------------------

/// @P1 tenant, @P2 id, @P3 user_name, @P4 user_name_ci, @P5 external_id, @P6 display_name,
/// @P7 active, @P8 deactivated_at, @P9…@P24 custom attributes, @P25 doc, @P26 doc_ci,
/// @P27 change_seq, @P28 now (created and last_modified). Returns pk.
///
/// Two concurrent POSTs of one userName: the filtered unique index users_user_name makes the
/// second INSERT wait for the first transaction's key lock and then fail with error 2601
/// (reported as a conflict), or succeed if the first rolled back.
static INSERT_USER: LazyLock<String> = LazyLock::new(|| {
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
static UPDATE_USER: LazyLock<String> = LazyLock::new(|| {
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
const CURRENT_USER: &str = "SELECT pk, doc, change_seq, created, last_modified FROM scim.users \
     WHERE tenant = @P1 AND id = @P2 AND deleted_at IS NULL";

/// The version of a live user, locked for the rest of the transaction: @P1 tenant, @P2 id.
const USER_VERSION_FOR_UPDATE: &str = "SELECT change_seq FROM scim.users WITH (UPDLOCK, ROWLOCK) \
     WHERE tenant = @P1 AND id = @P2 AND deleted_at IS NULL";

/// DELETE from the client (the row stays for the sync lifecycle): @P1 now, @P2 change_seq,
/// @P3 tenant, @P4 id. Returns pk.
const SOFT_DELETE_USER: &str = "UPDATE scim.users SET deleted_at = @P1, active = 0, \
     deactivated_at = COALESCE(deactivated_at, @P1), change_seq = @P2, last_modified = @P1 \
     OUTPUT inserted.pk WHERE tenant = @P3 AND id = @P4 AND deleted_at IS NULL";

/// @P1 user pk.
const DELETE_USER_EMAILS: &str = "DELETE FROM scim.user_emails WHERE user_pk = @P1";

/// All of a user's email rows in one statement: @P1 user pk, @P2 tenant, @P3 JSON array of
/// {"type": …, "value": …, "primary": …} (already lower-cased).
const INSERT_USER_EMAILS: &str = "INSERT INTO scim.user_emails (user_pk, tenant, type_ci, value_ci, is_primary) \
     SELECT @P1, @P2, j.type_ci, j.value_ci, j.is_primary FROM OPENJSON(@P3) \
     WITH (type_ci NVARCHAR(64) '$.type', value_ci NVARCHAR(320) '$.value', is_primary BIT '$.primary') j";

/// Stamp one user: @P1 change_seq, @P2 tenant, @P3 id.
const STAMP_USER: &str = "UPDATE scim.users SET change_seq = @P1 WHERE tenant = @P2 AND id = @P3";

// ---- groups ---------------------------------------------------------------------------------

/// @P1 tenant, @P2 id, @P3 display_name, @P4 display_name_ci, @P5 external_id, @P6 doc,
/// @P7 doc_ci, @P8 change_seq, @P9 now. Returns pk. A duplicate displayName fails with 2601.
const INSERT_GROUP: &str = "INSERT INTO scim.groups (tenant, id, display_name, display_name_ci, external_id, \
     doc, doc_ci, change_seq, created, last_modified) OUTPUT inserted.pk \
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P9)";

/// @P1 tenant, @P2 id.
const CURRENT_GROUP: &str = "SELECT pk, doc, change_seq, created, last_modified FROM scim.groups \
     WHERE tenant = @P1 AND id = @P2";

/// The version of a group, locked for the rest of the transaction: @P1 pk.
const GROUP_VERSION_FOR_UPDATE: &str =
    "SELECT change_seq FROM scim.groups WITH (UPDLOCK, ROWLOCK) WHERE pk = @P1";

/// @P1 tenant, @P2 id (locked, for DELETE).
const GROUP_VERSION_BY_ID_FOR_UPDATE: &str =
    "SELECT change_seq FROM scim.groups WITH (UPDLOCK, ROWLOCK) WHERE tenant = @P1 AND id = @P2";

/// Compare-and-swap update of a group's document: @P1 display_name, @P2 display_name_ci,
/// @P3 external_id, @P4 doc, @P5 doc_ci, @P6 change_seq, @P7 now, @P8 pk, @P9 the version read.
const UPDATE_GROUP: &str = "UPDATE scim.groups SET display_name = @P1, display_name_ci = @P2, \
     external_id = @P3, doc = @P4, doc_ci = @P5, change_seq = @P6, last_modified = @P7 \
     WHERE pk = @P8 AND change_seq = @P9";

/// A member-only change: @P1 change_seq, @P2 now, @P3 pk.
const STAMP_GROUP: &str =
    "UPDATE scim.groups SET change_seq = @P1, last_modified = @P2 WHERE pk = @P3";

/// @P1 tenant, @P2 id.
const DELETE_GROUP: &str = "DELETE FROM scim.groups WHERE tenant = @P1 AND id = @P2";

// ---- members --------------------------------------------------------------------------------

/// Stamp every live user member of a group: @P1 change_seq, @P2 tenant, @P3 group id.
const STAMP_GROUP_MEMBERS: &str = "UPDATE scim.users SET change_seq = @P1 \
     WHERE tenant = @P2 AND deleted_at IS NULL AND id IN \
     (SELECT member_id FROM scim.group_members WHERE tenant = @P2 AND group_id = @P3 AND member_type = N'User')";

/// @P1 tenant, @P2 group id. Returns the number of rows removed (@@ROWCOUNT via rows affected).
const DELETE_ALL_MEMBERS: &str =
    "DELETE FROM scim.group_members WHERE tenant = @P1 AND group_id = @P2";

/// Whether an id is a live user or a group of the tenant: @P1 tenant, @P2 id.
const MEMBER_KIND: &str = "SELECT N'User' FROM scim.users WHERE tenant = @P1 AND id = @P2 AND deleted_at IS NULL \
     UNION ALL SELECT N'Group' FROM scim.groups WHERE tenant = @P1 AND id = @P2";

/// Add one member row unless present: @P1 tenant, @P2 group id, @P3 member id, @P4 type.
/// UPDLOCK + HOLDLOCK lock the key (or the gap where it would be), so two concurrent adds of
/// one member give one insert and one no-op instead of a primary key violation.
const ADD_MEMBER: &str = "INSERT INTO scim.group_members (tenant, group_id, member_id, member_type) \
     SELECT @P1, @P2, @P3, @P4 WHERE NOT EXISTS (SELECT 1 FROM scim.group_members WITH (UPDLOCK, HOLDLOCK) \
     WHERE tenant = @P1 AND group_id = @P2 AND member_id = @P3)";

/// Remove one member row: @P1 tenant, @P2 group id, @P3 member id. Returns its type.
const REMOVE_MEMBER: &str = "DELETE FROM scim.group_members OUTPUT deleted.member_type \
     WHERE tenant = @P1 AND group_id = @P2 AND member_id = @P3";

/// The groups a member leaves get a new version: @P1 change_seq, @P2 now, @P3 tenant, @P4 member id.
const STAMP_GROUPS_OF_MEMBER: &str = "UPDATE scim.groups SET change_seq = @P1, last_modified = @P2 \
     WHERE tenant = @P3 AND id IN (SELECT group_id FROM scim.group_members WHERE tenant = @P3 AND member_id = @P4)";

/// @P1 tenant, @P2 member id.
const DELETE_MEMBERSHIPS_OF: &str =
    "DELETE FROM scim.group_members WHERE tenant = @P1 AND member_id = @P2";

// ---- reads and lists ------------------------------------------------------------------------

/// SELECT of live resources of `kind` for tenant @P1, aliased `r`: id, doc, change_seq,
/// created, last_modified, related. related is a JSON array of objects — a user's groups
/// ({"id", "name"}) or a group's members ({"id", "type"}) — or NULL when not asked for.
fn select_sql(kind: ResourceKind, with_related: bool) -> String {
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
fn get_sql(kind: ResourceKind, with_related: bool) -> String {
    format!("{} AND r.id = @P2", select_sql(kind, with_related))
}

/// The total for a list: binds `cond.params` (or just the tenant).
fn count_sql(kind: ResourceKind, cond: Option<&Condition>) -> String {
    let (table, live) = match kind {
        ResourceKind::User => ("scim.users", " AND r.deleted_at IS NULL"),
        ResourceKind::Group => ("scim.groups", ""),
    };
    let filter = cond.map(|c| format!(" AND {}", c.sql)).unwrap_or_default();
    format!("SELECT COUNT_BIG(*) FROM {table} r WHERE r.tenant = @P1{live}{filter}")
}

/// One page: binds `cond.params` (or just the tenant), then the 0-based offset and the count,
/// whose parameter numbers are returned with the SQL.
fn page_sql(
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

// ---- the store ------------------------------------------------------------------------------

/// The parameters of [`UPDATE_USER`], in @P order, for a planned update of the user at `pk`
/// read at `version`, written with change sequence value `seq`.
fn update_user_params(
    cols: &UserColumns,
    text: &str,
    text_ci: &str,
    now: DateTime<Utc>,
    seq: i64,
    pk: i64,
    version: i64,
) -> Vec<Param> {
    let mut p = vec![
        Param::Text(cols.user_name.clone()),
        Param::Text(cols.user_name.to_lowercase()),
        Param::opt_text(&cols.external_id),
        Param::opt_text(&cols.display_name),
        Param::Bool(cols.active),
        Param::Time(naive(now)),
    ];
    p.extend(cols.custom.iter().map(Param::opt_text));
    p.extend([
        Param::Text(text.to_string()),
        Param::Text(text_ci.to_string()),
        Param::Int(seq),
        Param::Int(pk),
        Param::Int(version),
    ]);
    p
}

const USER_NAME_TAKEN: &str = "a user with this userName already exists";
const DISPLAY_NAME_TAKEN: &str = "a group with this displayName already exists";

fn emails_json(cols: &UserColumns) -> String {
    Value::Array(
        cols.emails
            .iter()
            .map(|e| {
                serde_json::json!({"type": e.type_ci, "value": e.value_ci, "primary": e.primary})
            })
            .collect(),
    )
    .to_string()
}

async fn insert_emails(
    c: &mut Client,
    tenant: &str,
    pk: i64,
    cols: &UserColumns,
) -> Result<(), SqlError> {
    if cols.emails.is_empty() {
        return Ok(());
    }
    let mut q = Query::new(INSERT_USER_EMAILS);
    q.bind(pk);
    q.bind(tenant.to_string());
    q.bind(emails_json(cols));
    execute(c, q).await.map(drop)
}

enum Outcome {
    Retry,
    Unchanged,
    Written(i64),
}

impl MssqlStaging {
    async fn get(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        with_related: bool,
    ) -> Result<Stored, StoreError> {
        let sql = get_sql(kind, with_related);
        let mut q = Query::new(sql.as_str());
        q.bind(tenant.to_string());
        q.bind(id.to_string());
        let mut c = self.pool.get().await?;
        let row = first(&mut c, q).await?.ok_or(StoreError::NotFound)?;
        stored(kind, &row)
    }

    /// pk, doc, version, created, last_modified of a live resource.
    async fn current(
        &self,
        kind: ResourceKind,
        tenant: &str,
        id: &str,
    ) -> Result<Current, StoreError> {
        let sql = match kind {
            ResourceKind::User => CURRENT_USER,
            ResourceKind::Group => CURRENT_GROUP,
        };
        let mut q = Query::new(sql);
        q.bind(tenant.to_string());
        q.bind(id.to_string());
        let mut c = self.pool.get().await?;
        let r = first(&mut c, q).await?.ok_or(StoreError::NotFound)?;
        Ok(Current {
            pk: int(&r, 0)?,
            doc: text(&r, 1)?,
            version: int(&r, 2)?,
            created: rows::time(&r, 3)?,
            last_modified: rows::time(&r, 4)?,
        })
    }

    /// One page of users or groups matching `cond` (compiled by [`super::filter_sql`]), and
    /// the total count, from one batch.
    async fn list_translated(
        &self,
        tenant: &str,
        kind: ResourceKind,
        cond: Option<&Condition>,
        sort: Option<&Sort>,
        page: &Page,
        with_related: bool,
    ) -> Result<(i64, Vec<Stored>), StoreError> {
        let base = match cond {
            Some(c) => c.params.clone(),
            None => vec![Param::Text(tenant.to_string())],
        };
        let count = count_sql(kind, cond);
        let wants_page = page.count > 0;
        let sql = if wants_page {
            format!("{count}; {}", page_sql(kind, cond, sort, with_related).0)
        } else {
            count
        };
        let mut q = Query::new(sql);
        for p in &base {
            p.bind(&mut q);
        }
        if wants_page {
            q.bind((page.start_index - 1).max(0));
            q.bind(page.count);
        }
        let mut c = self.pool.get().await?;
        let mut sets = results(&mut c, q).await?.into_iter();
        let total = match sets.next().and_then(|r| r.into_iter().next()) {
            Some(r) => int(&r, 0)?,
            None => 0,
        };
        let items = sets
            .next()
            .unwrap_or_default()
            .iter()
            .map(|r| stored(kind, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((total, items))
    }
}

/// Run `f` in one transaction; when `wrote` says that it changed something, `log`'s entry is
/// written in the same transaction, and so commits with the change.
async fn logged<T>(
    log: &RequestLog,
    pool: &MssqlPool,
    f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    wrote: fn(&T) -> bool,
) -> Result<T, StoreError> {
    let entry = log.for_write();
    let (t, logged) = transaction(pool, async move |c: &mut Client| {
        let t = f(c).await?;
        let logged = match entry {
            Some(e) if wrote(&t) => {
                insert_log_rows(c, std::slice::from_ref(&e)).await?;
                Some(e)
            }
            _ => None,
        };
        Ok::<_, StoreError>((t, logged))
    })
    .await?;
    if let Some(e) = logged {
        log.written(e);
    }
    Ok(t)
}

#[async_trait]
impl ScimStore for MssqlStaging {
    async fn create_user(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        doc: &Map<String, Value>,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError> {
        let cols = UserColumns::from_doc(doc, rt.custom_urn().unwrap_or_default());
        let doc_text = serde_json::to_string(doc)?;
        let doc_ci = serde_json::to_string(&fold_case(rt, doc))?;
        let seq = logged(
            log,
            &self.pool,
            async |c: &mut Client| {
                let seq = next_seq(c).await?;
                let mut q = Query::new(INSERT_USER.as_str());
                q.bind(tenant.to_string());
                q.bind(id.to_string());
                q.bind(cols.user_name.clone());
                q.bind(cols.user_name.to_lowercase());
                q.bind(cols.external_id.clone());
                q.bind(cols.display_name.clone());
                q.bind(cols.active);
                q.bind((!cols.active).then(|| naive(now)));
                for v in &cols.custom {
                    q.bind(v.clone());
                }
                q.bind(doc_text.clone());
                q.bind(doc_ci.clone());
                q.bind(seq);
                q.bind(naive(now));
                let row = first(c, q)
                    .await
                    .map_err(|e| e.or_conflict(USER_NAME_TAKEN))?
                    .ok_or_else(|| SqlError::missing("row inserted"))?;
                let pk = int(&row, 0)?;
                insert_emails(c, tenant, pk, &cols).await?;
                Ok::<_, StoreError>(seq)
            },
            |_| true,
        )
        .await?;
        let now_s = format_time(now);
        Ok(Stored {
            id: id.to_string(),
            doc: doc_text,
            version: seq,
            created: now_s.clone(),
            last_modified: now_s,
            related: Some(vec![]),
        })
    }

    async fn get_user(
        &self,
        tenant: &str,
        id: &str,
        with_groups: bool,
    ) -> Result<Stored, StoreError> {
        self.get(tenant, ResourceKind::User, id, with_groups).await
    }

    /// Read-modify-write of one user with a compare-and-swap on its version.
    async fn update_user(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        change: UserChange<'_>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let cur = self.current(ResourceKind::User, tenant, id).await?;
            let Some(UserUpdate {
                cols,
                emails_changed,
                keys_changed: _,
                active_changed: _,
                text: new_text,
                text_ci: new_ci,
            }) = update::plan_user(rt, &cur, if_match, change)?
            else {
                // Nothing changed: no new version, nothing for the sync engine to do.
                return Ok(cur.unchanged(id));
            };
            let (pk, version) = (cur.pk, cur.version);
            // None: the user changed since it was read (the taken value is a gap).
            let written: Option<i64> = logged(
                log,
                &self.pool,
                async |c: &mut Client| {
                    let seq = next_seq(c).await?;
                    let mut q = Query::new(UPDATE_USER.as_str());
                    for p in update_user_params(&cols, &new_text, &new_ci, now, seq, pk, version) {
                        p.bind(&mut q);
                    }
                    let n = execute(c, q)
                        .await
                        .map_err(|e| e.or_conflict(USER_NAME_TAKEN))?;
                    if n == 0 {
                        return Ok::<_, StoreError>(None);
                    }
                    if emails_changed {
                        let mut q = Query::new(DELETE_USER_EMAILS);
                        q.bind(pk);
                        execute(c, q).await?;
                        insert_emails(c, tenant, pk, &cols).await?;
                    }
                    Ok(Some(seq))
                },
                Option::is_some,
            )
            .await?;
            if let Some(seq) = written {
                return Ok(Stored {
                    id: id.to_string(),
                    doc: new_text,
                    version: seq,
                    created: cur.created,
                    last_modified: format_time(now),
                    related: None,
                });
            }
        }
        Err(StoreError::Contended)
    }

    /// DELETE from the client: gone from SCIM at once, memberships removed, row kept.
    async fn delete_user(
        &self,
        tenant: &str,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<(), StoreError> {
        logged(
            log,
            &self.pool,
            async |c: &mut Client| {
                let mut q = Query::new(USER_VERSION_FOR_UPDATE);
                q.bind(tenant.to_string());
                q.bind(id.to_string());
                let row = first(c, q).await?.ok_or(StoreError::NotFound)?;
                check_version(if_match, int(&row, 0)?)?;
                let seq = next_seq(c).await?;
                let mut q = Query::new(SOFT_DELETE_USER);
                q.bind(naive(now));
                q.bind(seq);
                q.bind(tenant.to_string());
                q.bind(id.to_string());
                let row = first(c, q).await?.ok_or(StoreError::NotFound)?;
                let mut q = Query::new(DELETE_USER_EMAILS);
                q.bind(int(&row, 0)?);
                execute(c, q).await?;
                remove_from_all_groups(c, tenant, id, seq, now).await?;
                Ok(())
            },
            |_| true,
        )
        .await
    }

    async fn create_group(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        change: GroupChange,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError> {
        let (display, external_id) = group_columns(&change.doc);
        let doc_text = serde_json::to_string(&change.doc)?;
        let doc_ci = serde_json::to_string(&fold_case(rt, &change.doc))?;
        let seq = logged(
            log,
            &self.pool,
            async |c: &mut Client| {
                let seq = next_seq(c).await?;
                let mut q = Query::new(INSERT_GROUP);
                q.bind(tenant.to_string());
                q.bind(id.to_string());
                q.bind(display.clone());
                q.bind(display.to_lowercase());
                q.bind(external_id.clone());
                q.bind(doc_text.clone());
                q.bind(doc_ci.clone());
                q.bind(seq);
                q.bind(naive(now));
                first(c, q)
                    .await
                    .map_err(|e| e.or_conflict(DISPLAY_NAME_TAKEN))?;
                apply_member_ops(c, tenant, id, &change.members, seq).await?;
                Ok::<_, StoreError>(seq)
            },
            |_| true,
        )
        .await?;
        let now_s = format_time(now);
        Ok(Stored {
            id: id.to_string(),
            doc: doc_text,
            version: seq,
            created: now_s.clone(),
            last_modified: now_s,
            related: None,
        })
    }

    async fn get_group(
        &self,
        tenant: &str,
        id: &str,
        with_members: bool,
    ) -> Result<Stored, StoreError> {
        self.get(tenant, ResourceKind::Group, id, with_members)
            .await
    }

    /// Read-modify-write of one group: document and member rows, atomically.
    async fn update_group(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        change: GroupChangeFn<'_>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let cur = self.current(ResourceKind::Group, tenant, id).await?;
            let Some(GroupUpdate {
                members,
                doc_changed,
                renamed,
                display,
                external_id,
                text: new_text,
                text_ci: new_ci,
                needs_version,
            }) = update::plan_group(rt, &cur, if_match, change)?
            else {
                return Ok(cur.unchanged(id));
            };
            let (pk, version) = (cur.pk, cur.version);
            let outcome = logged(
                log,
                &self.pool,
                async |c: &mut Client| {
                    let mut q = Query::new(GROUP_VERSION_FOR_UPDATE);
                    q.bind(pk);
                    let current = match first(c, q).await? {
                        Some(r) => Some(int(&r, 0)?),
                        None => None,
                    };
                    if current.is_none() || needs_version && current != Some(version) {
                        return Ok::<_, StoreError>(Outcome::Retry);
                    }
                    let seq = next_seq(c).await?;
                    let members_changed = apply_member_ops(c, tenant, id, &members, seq).await?;
                    if !doc_changed && !members_changed {
                        // Nothing was written (the taken value is a gap).
                        return Ok(Outcome::Unchanged);
                    }
                    if doc_changed {
                        let mut q = Query::new(UPDATE_GROUP);
                        q.bind(display.clone());
                        q.bind(display.to_lowercase());
                        q.bind(external_id.clone());
                        q.bind(new_text.clone());
                        q.bind(new_ci.clone());
                        q.bind(seq);
                        q.bind(naive(now));
                        q.bind(pk);
                        q.bind(version);
                        execute(c, q)
                            .await
                            .map_err(|e| e.or_conflict(DISPLAY_NAME_TAKEN))?;
                        if renamed {
                            // The members' group context (name, externalId) changed: they need a sync.
                            stamp_members(c, tenant, id, seq).await?;
                        }
                    } else {
                        let mut q = Query::new(STAMP_GROUP);
                        q.bind(seq);
                        q.bind(naive(now));
                        q.bind(pk);
                        execute(c, q).await?;
                    }
                    Ok(Outcome::Written(seq))
                },
                |o| matches!(o, Outcome::Written(_)),
            )
            .await?;
            match outcome {
                Outcome::Retry => continue,
                Outcome::Unchanged => return Ok(cur.unchanged(id)),
                Outcome::Written(seq) => {
                    return Ok(Stored {
                        id: id.to_string(),
                        doc: new_text,
                        version: seq,
                        created: cur.created,
                        last_modified: format_time(now),
                        related: None,
                    });
                }
            }
        }
        Err(StoreError::Contended)
    }

    async fn delete_group(
        &self,
        tenant: &str,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<(), StoreError> {
        logged(
            log,
            &self.pool,
            async |c: &mut Client| {
                let mut q = Query::new(GROUP_VERSION_BY_ID_FOR_UPDATE);
                q.bind(tenant.to_string());
                q.bind(id.to_string());
                let row = first(c, q).await?.ok_or(StoreError::NotFound)?;
                check_version(if_match, int(&row, 0)?)?;
                let seq = next_seq(c).await?;
                stamp_members(c, tenant, id, seq).await?;
                let mut q = Query::new(DELETE_ALL_MEMBERS);
                q.bind(tenant.to_string());
                q.bind(id.to_string());
                execute(c, q).await?;
                remove_from_all_groups(c, tenant, id, seq, now).await?;
                let mut q = Query::new(DELETE_GROUP);
                q.bind(tenant.to_string());
                q.bind(id.to_string());
                execute(c, q).await?;
                Ok(())
            },
            |_| true,
        )
        .await
    }

    /// One page of users or groups and the total, the filter and sort key in T-SQL.
    async fn list(
        &self,
        tenant: &str,
        rt: &ResourceType,
        query: ListQuery<'_>,
        page: &Page,
        with_related: bool,
    ) -> Result<(i64, Vec<Stored>), StoreError> {
        let (cond, sort) = translate(
            &query,
            |f| filter_sql::compile(rt, tenant, f),
            |by| filter_sql::sort_expression(rt, by),
        )?;
        self.list_translated(
            tenant,
            rt.kind,
            cond.as_ref(),
            sort.as_ref(),
            page,
            with_related,
        )
        .await
    }
}

/// id, doc, change_seq, created, last_modified, related.
fn stored(kind: ResourceKind, r: &Row) -> Result<Stored, StoreError> {
    let related = match opt_text(r, 5)? {
        None => None,
        Some(json) => {
            let items: Vec<Map<String, Value>> = serde_json::from_str(&json)?;
            let s = |m: &Map<String, Value>, k: &str| {
                m.get(k).and_then(Value::as_str).map(str::to_string)
            };
            Some(
                items
                    .iter()
                    .map(|m| match kind {
                        ResourceKind::Group => Related {
                            id: s(m, "id").unwrap_or_default(),
                            kind: s(m, "type").unwrap_or_default(),
                            display: None,
                        },
                        ResourceKind::User => Related {
                            id: s(m, "id").unwrap_or_default(),
                            kind: "direct".into(),
                            display: s(m, "name"),
                        },
                    })
                    .collect(),
            )
        }
    };
    Ok(Stored {
        id: text(r, 0)?,
        doc: text(r, 1)?,
        version: int(r, 2)?,
        created: rows::time(r, 3)?,
        last_modified: rows::time(r, 4)?,
        related,
    })
}

async fn stamp_members(
    c: &mut Client,
    tenant: &str,
    group_id: &str,
    seq: i64,
) -> Result<(), SqlError> {
    let mut q = Query::new(STAMP_GROUP_MEMBERS);
    q.bind(seq);
    q.bind(tenant.to_string());
    q.bind(group_id.to_string());
    execute(c, q).await.map(drop)
}

/// A member leaves every group it is in; the groups get version `seq`. Also the sync
/// lifecycle's purge of a user (the one operation of this module it shares).
pub(super) async fn remove_from_all_groups(
    c: &mut Client,
    tenant: &str,
    member_id: &str,
    seq: i64,
    now: DateTime<Utc>,
) -> Result<(), SqlError> {
    let mut q = Query::new(STAMP_GROUPS_OF_MEMBER);
    q.bind(seq);
    q.bind(naive(now));
    q.bind(tenant.to_string());
    q.bind(member_id.to_string());
    execute(c, q).await?;
    let mut q = Query::new(DELETE_MEMBERSHIPS_OF);
    q.bind(tenant.to_string());
    q.bind(member_id.to_string());
    execute(c, q).await.map(drop)
}

async fn stamp_user(c: &mut Client, tenant: &str, id: &str, seq: i64) -> Result<(), SqlError> {
    let mut q = Query::new(STAMP_USER);
    q.bind(seq);
    q.bind(tenant.to_string());
    q.bind(id.to_string());
    execute(c, q).await.map(drop)
}

/// Member changes as row changes: O(members changed). Returns whether anything changed.
async fn apply_member_ops(
    c: &mut Client,
    tenant: &str,
    group_id: &str,
    ops: &[MemberOp],
    seq: i64,
) -> Result<bool, StoreError> {
    let mut changed = false;
    for op in ops {
        match op {
            MemberOp::RemoveAll => {
                stamp_members(c, tenant, group_id, seq).await?;
                let mut q = Query::new(DELETE_ALL_MEMBERS);
                q.bind(tenant.to_string());
                q.bind(group_id.to_string());
                changed |= execute(c, q).await? > 0;
            }
            MemberOp::Add(members) => {
                for m in members {
                    if m.value == group_id {
                        return Err(ScimError::invalid_value(
                            "a group cannot be a member of itself",
                        )
                        .into());
                    }
                    let mut q = Query::new(MEMBER_KIND);
                    q.bind(tenant.to_string());
                    q.bind(m.value.clone());
                    let kind = match first(c, q).await? {
                        Some(r) => text(&r, 0)?,
                        None => {
                            return Err(StoreError::Rejected(ScimError::invalid_value(format!(
                                "member {} is not a user or group of this tenant",
                                m.value
                            ))));
                        }
                    };
                    let mut q = Query::new(ADD_MEMBER);
                    q.bind(tenant.to_string());
                    q.bind(group_id.to_string());
                    q.bind(m.value.clone());
                    q.bind(kind.clone());
                    if execute(c, q).await? > 0 {
                        changed = true;
                        if kind == "User" {
                            stamp_user(c, tenant, &m.value, seq).await?;
                        }
                    }
                }
            }
            MemberOp::Remove(ids) => {
                for id in ids {
                    let mut q = Query::new(REMOVE_MEMBER);
                    q.bind(tenant.to_string());
                    q.bind(group_id.to_string());
                    q.bind(id.clone());
                    if let Some(r) = first(c, q).await? {
                        changed = true;
                        if text(&r, 0)? == "User" {
                            stamp_user(c, tenant, id, seq).await?;
                        }
                    }
                }
            }
        }
    }
    Ok(changed)
}

/// Every statement of this module, each variant of the dynamic ones.
#[cfg(test)]
pub(super) fn statements() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
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
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect();
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
    // Every filter translation, in the list statements it is used in.
    let user = ResourceType::user(crate::scim::schema::DEFAULT_CUSTOM_SCHEMA);
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
        // The batch the list sends: the count, then the page.
        out.push((
            format!("list batch [{f}]"),
            format!(
                "{}; {}",
                count_sql(*kind, Some(c)),
                page_sql(*kind, Some(c), s, true).0
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::scim::Limits;
    use crate::scim::patch;
    use crate::scim::resource::normalize;
    use crate::scim::schema::DEFAULT_CUSTOM_SCHEMA;

    /// The membership statements the sync lifecycle's purge also runs take the parameters
    /// [`remove_from_all_groups`] binds.
    #[test]
    fn the_shared_membership_statements_take_what_they_are_bound() {
        use crate::db::mssql::tsql::param_numbers;
        assert_eq!(param_numbers(STAMP_GROUPS_OF_MEMBER).len(), 4);
        assert_eq!(param_numbers(DELETE_MEMBERSHIPS_OF).len(), 2);
    }

    /// What an Entra PATCH writes on SQL Server: the statement, and its parameters in @P
    /// order, read against the statement's SET list. `active` arrives as the string "False"
    /// (Entra's dialect) and is written as a BIT 0, which also sets deactivated_at (@P5 = 0
    /// with the stored active = 1 → @P6); the work email changes in the document; the custom
    /// attribute lands in its column (@P7 is customAttribute01); absent custom attributes are
    /// NULL.
    #[test]
    fn an_entra_patch_writes_these_parameters() {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        let created = normalize(
            &rt,
            &json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "Mette@Example.com",
                "externalId": "0a1b",
                "displayName": "Mette Hansen",
                "active": true,
                "emails": [{"type": "work", "value": "mette@example.com", "primary": true}],
            }),
            &Limits::default(),
        )
        .unwrap()
        .doc;
        let current = Current {
            pk: 7,
            doc: serde_json::to_string(&created).unwrap(),
            version: 41,
            created: "2030-01-01T00:00:00.000Z".into(),
            last_modified: "2030-01-01T00:00:00.000Z".into(),
        };
        let ops = patch::parse(&json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                {"op": "Replace", "path": "active", "value": "False"},
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "M.Hansen@Example.com"},
                {"op": "Add", "path": format!("{DEFAULT_CUSTOM_SCHEMA}:customAttribute01"), "value": "2021-08-01"},
            ],
        }), &Limits::default())
        .unwrap();
        let plan = update::plan_user(&rt, &current, Some(&[41]), |mut d| {
            patch::apply(&rt, &mut d, &ops, &Limits::default())?;
            Ok(d)
        })
        .unwrap()
        .unwrap();
        assert!(plan.emails_changed);
        let now = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        let params = update_user_params(&plan.cols, &plan.text, &plan.text_ci, now, 42, 7, 41);
        let doc: Value = serde_json::from_str(&plan.text).unwrap();
        assert_eq!(doc["active"], json!(false));
        assert_eq!(doc["emails"][0]["value"], json!("M.Hansen@Example.com"));
        let mut expected = vec![
            Param::Text("Mette@Example.com".into()),
            Param::Text("mette@example.com".into()),
            Param::Text("0a1b".into()),
            Param::Text("Mette Hansen".into()),
            Param::Bool(false),
            Param::Time(naive(now)),
            Param::Text("2021-08-01".into()),
        ];
        expected.extend((0..15).map(|_| Param::Null));
        expected.extend([
            Param::Text(plan.text.clone()),
            Param::Text(plan.text_ci.clone()),
            Param::Int(42),
            Param::Int(7),
            Param::Int(41),
        ]);
        assert_eq!(params, expected);
        // 27 parameters, and the statement names exactly @P1…@P27.
        assert_eq!(params.len(), 27);
        for i in 1..=27 {
            assert!(UPDATE_USER.contains(&format!("@P{i}")), "@P{i}");
        }
        assert!(!UPDATE_USER.contains("@P28"));
        assert_eq!(
            UPDATE_USER.as_str(),
            "UPDATE scim.users SET user_name = @P1, user_name_ci = @P2, external_id = @P3, \
             display_name = @P4, deactivated_at = CASE WHEN @P5 = 0 AND active = 1 THEN @P6 \
             WHEN @P5 = 1 THEN NULL ELSE deactivated_at END, active = @P5, \
             custom_attribute_01 = @P7, custom_attribute_02 = @P8, custom_attribute_03 = @P9, \
             custom_attribute_04 = @P10, custom_attribute_05 = @P11, custom_attribute_06 = @P12, \
             custom_attribute_07 = @P13, custom_attribute_08 = @P14, custom_attribute_09 = @P15, \
             custom_attribute_10 = @P16, custom_attribute_11 = @P17, custom_attribute_12 = @P18, \
             custom_attribute_13 = @P19, custom_attribute_14 = @P20, custom_attribute_15 = @P21, \
             custom_attribute_16 = @P22, doc = @P23, doc_ci = @P24, change_seq = @P25, \
             last_modified = @P6 WHERE pk = @P26 AND change_seq = @P27 AND deleted_at IS NULL"
        );
    }
}
