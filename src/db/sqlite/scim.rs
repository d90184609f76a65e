//! The SCIM store on SQLite: users, groups and memberships, written as jobs of the writer
//! thread, read on the calling thread.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::ToSqlOutput;
use rusqlite::{OptionalExtension, ToSql, params};
use serde_json::{Map, Value};

use super::SqliteStaging;
use super::admin::{LogTable, insert_log_rows};
use super::conn::snapshot;
use super::filter_sql::{self, Condition, Param};
use crate::db::{Sort, task_failed, translate};
use crate::scim::ScimError;
use crate::scim::patch::MemberOp;
use crate::scim::resource::fold_case;
use crate::scim::schema::{ResourceKind, ResourceType};
use crate::store::update::{self, Current, GroupUpdate, UserUpdate, check_version, group_columns};
use crate::store::{
    GroupChange, GroupChangeFn, ListQuery, Page, Related, RequestLog, ScimStore, StoreError,
    Stored, UserChange, UserColumns, format_time,
};

type Conn = rusqlite::Connection;

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

static INSERT_USER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO users (tenant, id, user_name, user_name_ci, external_id, display_name, active, \
         deactivated_at, {}, doc, doc_ci, change_seq, created, last_modified) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, {}, ?, ?, ?, ?, ?) RETURNING pk",
        CUSTOM_COLUMNS.join(", "),
        ["?"; 16].join(", ")
    )
});

/// The UPDATE of a user, in four variants: with or without the key columns (userName,
/// externalId) and with or without active/deactivated_at. SQLite rewrites the index entries of
/// every column a statement sets, changed or not, so a write sets only what changed (a PATCH
/// of displayName then touches no userName or externalId index). Binds, in order: [user_name,
/// user_name_ci, external_id,] display_name, [active, now, active, active,] 16 custom, doc,
/// doc_ci, change_seq, last_modified, pk, version.
static UPDATE_USER: LazyLock<[String; 4]> = LazyLock::new(|| {
    let custom = CUSTOM_COLUMNS
        .iter()
        .map(|c| format!("{c} = ?"))
        .collect::<Vec<_>>()
        .join(", ");
    [(false, false), (false, true), (true, false), (true, true)].map(|(keys, active)| {
        format!(
            "UPDATE users SET {}display_name = ?, {}{custom}, doc = ?, doc_ci = ?, change_seq = ?, \
             last_modified = ? WHERE pk = ? AND change_seq = ?",
            if keys {
                "user_name = ?, user_name_ci = ?, external_id = ?, "
            } else {
                ""
            },
            // deactivated_at: set when active goes 1 → 0, cleared when it goes back.
            if active {
                "deactivated_at = CASE WHEN ? = 0 AND active = 1 THEN ? WHEN ? = 1 THEN NULL \
                 ELSE deactivated_at END, active = ?, "
            } else {
                ""
            },
        )
    })
});

fn update_user_sql(keys: bool, active: bool) -> &'static str {
    &UPDATE_USER[usize::from(keys) * 2 + usize::from(active)]
}

/// A user's row as the API writes it, derived from its normalised document off the writer
/// thread.
pub struct NewUserRow {
    cols: UserColumns,
    text: String,
    text_ci: String,
}

impl NewUserRow {
    pub fn of(rt: &ResourceType, doc: &Map<String, Value>) -> Result<NewUserRow, StoreError> {
        Ok(NewUserRow {
            cols: UserColumns::from_doc(doc, rt.custom_urn().unwrap_or_default()),
            text: serde_json::to_string(doc)?,
            text_ci: serde_json::to_string(&fold_case(rt, doc))?,
        })
    }
}

/// Insert a user and its e-mail rows, stamped `seq` at `now`; its pk. The API's creates and
/// bulk loads (the sync benchmark) write users with this one function.
pub fn insert_user_row(
    c: &Conn,
    tenant: &str,
    id: &str,
    row: &NewUserRow,
    seq: i64,
    now: &str,
) -> Result<i64, StoreError> {
    let cols = &row.cols;
    let user_name_ci = cols.user_name.to_lowercase();
    let deactivated = if cols.active { None } else { Some(now) };
    let mut p: Vec<&dyn ToSql> = vec![
        &tenant,
        &id,
        &cols.user_name,
        &user_name_ci,
        &cols.external_id,
        &cols.display_name,
        &cols.active,
        &deactivated,
    ];
    p.extend(cols.custom.iter().map(|v| v as &dyn ToSql));
    p.extend([&row.text as &dyn ToSql, &row.text_ci, &seq, &now, &now]);
    let pk: i64 = c
        .prepare_cached(&INSERT_USER)?
        .query_row(&p[..], |r| r.get(0))
        .map_err(|e| unique(e, "a user with this userName already exists"))?;
    insert_emails(c, tenant, pk, cols)?;
    Ok(pk)
}

/// A group's row as the API writes it (its members go separately).
pub struct NewGroupRow {
    display: String,
    external_id: Option<String>,
    text: String,
    text_ci: String,
}

impl NewGroupRow {
    pub fn of(rt: &ResourceType, doc: &Map<String, Value>) -> Result<NewGroupRow, StoreError> {
        let (display, external_id) = group_columns(doc);
        Ok(NewGroupRow {
            display,
            external_id,
            text: serde_json::to_string(doc)?,
            text_ci: serde_json::to_string(&fold_case(rt, doc))?,
        })
    }
}

/// Insert a group, stamped `seq` at `now`: the API's creates and bulk loads alike.
pub fn insert_group_row(
    c: &Conn,
    tenant: &str,
    id: &str,
    row: &NewGroupRow,
    seq: i64,
    now: &str,
) -> Result<(), StoreError> {
    let NewGroupRow {
        display,
        external_id,
        text,
        text_ci,
    } = row;
    c.prepare_cached(
        "INSERT INTO groups (tenant, id, display_name, display_name_ci, external_id, doc, \
         doc_ci, change_seq, created, last_modified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        tenant,
        id,
        display,
        display.to_lowercase(),
        external_id,
        text,
        text_ci,
        seq,
        now,
        now
    ])
    .map_err(|e| unique(e, "a group with this displayName already exists"))?;
    Ok(())
}

/// One user's membership in a group (the bulk load's; the API adds members through
/// [`apply_member_ops`], which also checks the member and stamps it).
pub fn insert_member_row(
    c: &Conn,
    tenant: &str,
    group_id: &str,
    user_id: &str,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO group_members (tenant, group_id, member_id, member_type) VALUES (?, ?, ?, 'User')",
    )?
    .execute(params![tenant, group_id, user_id])?;
    Ok(())
}

/// Move the change counter to at least `seq` (after a bulk load that assigned its own).
pub fn raise_seq(c: &Conn, seq: i64) -> Result<(), StoreError> {
    c.prepare_cached("UPDATE change_seq SET value = max(value, ?) WHERE id = 1")?
        .execute([seq])?;
    Ok(())
}

impl SqliteStaging {
    /// Run `f` on a read connection, on this thread: a point look-up takes microseconds.
    fn read_now<T>(&self, f: impl FnOnce(&Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.reads.with(f)
    }

    /// Run `f` as a job of the writer thread; its result once committed. When `wrote` says
    /// that `f` changed something, `log`'s entry is written in the same job, and so commits
    /// with the change.
    async fn write<T: Send + 'static>(
        &self,
        log: &RequestLog,
        f: impl FnOnce(&Conn) -> Result<T, StoreError> + Send + 'static,
        wrote: fn(&T) -> bool,
    ) -> Result<T, StoreError> {
        let entry = log.for_write();
        let (t, logged) = self
            .writes
            .run(move |c| {
                let t = f(c)?;
                let logged = match entry {
                    Some(e) if wrote(&t) => {
                        insert_log_rows(c, LogTable::Inbox, std::slice::from_ref(&e))?;
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

    /// One resource, with its groups or members in the same statement when asked.
    fn get(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        with_related: bool,
    ) -> Result<Stored, StoreError> {
        let sql = format!("{} AND r.id = ?", select_sql(kind, with_related));
        let row = self.read_now(|c| {
            Ok(c.prepare_cached(&sql)?
                .query_row(params![tenant, id], read_row)
                .optional()?)
        })?;
        stored(kind, row.ok_or(StoreError::NotFound)?)
    }

    /// The current document and version of a live resource, for an optimistic update.
    fn current(&self, kind: ResourceKind, tenant: &str, id: &str) -> Result<Current, StoreError> {
        let sql = match kind {
            ResourceKind::User => {
                "SELECT pk, doc, change_seq, created, last_modified FROM users \
                 WHERE tenant = ? AND id = ? AND deleted_at IS NULL"
            }
            ResourceKind::Group => {
                "SELECT pk, doc, change_seq, created, last_modified FROM groups WHERE tenant = ? AND id = ?"
            }
        };
        self.read_now(|c| {
            Ok(c.prepare_cached(sql)?
                .query_row(params![tenant, id], |r| {
                    Ok(Current {
                        pk: r.get(0)?,
                        doc: r.get(1)?,
                        version: r.get(2)?,
                        created: r.get(3)?,
                        last_modified: r.get(4)?,
                    })
                })
                .optional()?)
        })?
        .ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl ScimStore for SqliteStaging {
    async fn create_user(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        doc: &Map<String, Value>,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError> {
        let row = NewUserRow::of(rt, doc)?;
        let doc_text = row.text.clone();
        let now_s = format_time(now);
        let (tenant_o, id_o, now_o) = (tenant.to_string(), id.to_string(), now_s.clone());
        let seq = self
            .write(
                log,
                move |c| {
                    let seq = next_seq(c)?;
                    insert_user_row(c, &tenant_o, &id_o, &row, seq, &now_o)?;
                    Ok::<_, StoreError>(seq)
                },
                |_| true,
            )
            .await?;
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
        self.get(tenant, ResourceKind::User, id, with_groups)
    }

    /// Read-modify-write of one user. `change` gets the current document and returns the new
    /// one; an error from it leaves the store untouched. The write succeeds only if the user
    /// did not change in between (compare-and-swap on its version); otherwise it starts over.
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
            let cur = self.current(ResourceKind::User, tenant, id)?;
            let Some(UserUpdate {
                cols,
                emails_changed,
                keys_changed,
                active_changed,
                text: new_text,
                text_ci: new_ci,
            }) = update::plan_user(rt, &cur, if_match, change)?
            else {
                // Nothing changed: no new version, nothing for the sync engine to do.
                return Ok(cur.unchanged(id));
            };
            let (pk, version) = (cur.pk, cur.version);
            let now_s = format_time(now);
            let (tenant_o, text, now_o) = (tenant.to_string(), new_text.clone(), now_s.clone());
            let seq = self
                .write(
                    log,
                    move |c| {
                        let seq = next_seq(c)?;
                        let user_name_ci = cols.user_name.to_lowercase();
                        let mut p: Vec<&dyn ToSql> = Vec::with_capacity(31);
                        if keys_changed {
                            p.extend([
                                &cols.user_name as &dyn ToSql,
                                &user_name_ci,
                                &cols.external_id,
                            ]);
                        }
                        p.push(&cols.display_name);
                        if active_changed {
                            p.extend([
                                &cols.active as &dyn ToSql,
                                &now_o,
                                &cols.active,
                                &cols.active,
                            ]);
                        }
                        p.extend(cols.custom.iter().map(|v| v as &dyn ToSql));
                        p.extend([&text as &dyn ToSql, &new_ci, &seq, &now_o, &pk, &version]);
                        let n = c
                            .prepare_cached(update_user_sql(keys_changed, active_changed))?
                            .execute(&p[..])
                            .map_err(|e| unique(e, "a user with this userName already exists"))?;
                        if n == 0 {
                            return Ok(None);
                        }
                        if emails_changed {
                            c.prepare_cached("DELETE FROM user_emails WHERE user_pk = ?")?
                                .execute([pk])?;
                            insert_emails(c, &tenant_o, pk, &cols)?;
                        }
                        Ok(Some(seq))
                    },
                    Option::is_some,
                )
                .await?;
            if let Some(seq) = seq {
                return Ok(Stored {
                    id: id.to_string(),
                    doc: new_text,
                    version: seq,
                    created: cur.created,
                    last_modified: now_s,
                    related: None,
                });
            }
        }
        Err(StoreError::Contended)
    }

    /// DELETE from the client: the user disappears from SCIM at once and loses its memberships;
    /// the row stays (deleted_at) so the sync lifecycle can offboard it after retention.
    async fn delete_user(
        &self,
        tenant: &str,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<(), StoreError> {
        let (tenant, id, now_s) = (tenant.to_string(), id.to_string(), format_time(now));
        let if_match = if_match.map(<[i64]>::to_vec);
        self.write(log, move |c| {
                let version: Option<i64> = c
                    .prepare_cached(
                        "SELECT change_seq FROM users WHERE tenant = ? AND id = ? AND deleted_at IS NULL",
                    )?
                    .query_row(params![tenant, id], |r| r.get(0))
                    .optional()?;
                check_version(if_match.as_deref(), version.ok_or(StoreError::NotFound)?)?;
                let seq = next_seq(c)?;
                let pk: i64 = c
                    .prepare_cached(
                        "UPDATE users SET deleted_at = ?1, active = 0, \
                         deactivated_at = COALESCE(deactivated_at, ?1), change_seq = ?2, last_modified = ?1 \
                         WHERE tenant = ?3 AND id = ?4 AND deleted_at IS NULL RETURNING pk",
                    )?
                    .query_row(params![now_s, seq, tenant, id], |r| r.get(0))?;
                c.prepare_cached("DELETE FROM user_emails WHERE user_pk = ?")?
                    .execute([pk])?;
                remove_from_all_groups(c, &tenant, &id, seq, &now_s)
            }, |_| true)
            .await
    }

    // ---- groups ------------------------------------------------------------------------

    async fn create_group(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        change: GroupChange,
        now: DateTime<Utc>,
        log: &RequestLog,
    ) -> Result<Stored, StoreError> {
        let row = NewGroupRow::of(rt, &change.doc)?;
        let doc_text = row.text.clone();
        let now_s = format_time(now);
        let (tenant_o, id_o, now_o) = (tenant.to_string(), id.to_string(), now_s.clone());
        let members = change.members;
        let seq = self
            .write(
                log,
                move |c| {
                    let seq = next_seq(c)?;
                    insert_group_row(c, &tenant_o, &id_o, &row, seq, &now_o)?;
                    apply_member_ops(c, &tenant_o, &id_o, &members, seq)?;
                    Ok::<_, StoreError>(seq)
                },
                |_| true,
            )
            .await?;
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
    }

    /// Read-modify-write of one group: its document and its member rows, atomically, with the
    /// same compare-and-swap on the version as users.
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
            let cur = self.current(ResourceKind::Group, tenant, id)?;
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
            let now_s = format_time(now);
            let (tenant_o, id_o, text, now_o) = (
                tenant.to_string(),
                id.to_string(),
                new_text.clone(),
                now_s.clone(),
            );
            let outcome = self
                .write(log, move |c| {
                    let current: Option<i64> = c
                        .prepare_cached("SELECT change_seq FROM groups WHERE pk = ?")?
                        .query_row([pk], |r| r.get(0))
                        .optional()?;
                    if current.is_none() || needs_version && current != Some(version) {
                        return Ok(Outcome::Retry);
                    }
                    let seq = next_seq(c)?;
                    let members_changed = apply_member_ops(c, &tenant_o, &id_o, &members, seq)?;
                    if !doc_changed && !members_changed {
                        return Ok(Outcome::Unchanged);
                    }
                    if doc_changed {
                        c.prepare_cached(
                            "UPDATE groups SET display_name = ?, display_name_ci = ?, external_id = ?, \
                             doc = ?, doc_ci = ?, change_seq = ?, last_modified = ? WHERE pk = ?",
                        )?
                        .execute(params![
                            display,
                            display.to_lowercase(),
                            external_id,
                            text,
                            new_ci,
                            seq,
                            now_o,
                            pk
                        ])
                        .map_err(|e| unique(e, "a group with this displayName already exists"))?;
                        if renamed {
                            // The members' group context (name, externalId) changed: they need a sync.
                            stamp_members(c, &tenant_o, &id_o, seq)?;
                        }
                    } else {
                        c.prepare_cached(
                            "UPDATE groups SET change_seq = ?, last_modified = ? WHERE pk = ?",
                        )?
                        .execute(params![seq, now_o, pk])?;
                    }
                    Ok(Outcome::Written(seq))
                }, |o| matches!(o, Outcome::Written(_)))
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
                        last_modified: now_s,
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
        let (tenant, id, now_s) = (tenant.to_string(), id.to_string(), format_time(now));
        let if_match = if_match.map(<[i64]>::to_vec);
        self.write(
            log,
            move |c| {
                let version: Option<i64> = c
                    .prepare_cached("SELECT change_seq FROM groups WHERE tenant = ? AND id = ?")?
                    .query_row(params![tenant, id], |r| r.get(0))
                    .optional()?;
                check_version(if_match.as_deref(), version.ok_or(StoreError::NotFound)?)?;
                let seq = next_seq(c)?;
                stamp_members(c, &tenant, &id, seq)?;
                c.prepare_cached("DELETE FROM group_members WHERE tenant = ? AND group_id = ?")?
                    .execute(params![tenant, id])?;
                remove_from_all_groups(c, &tenant, &id, seq, &now_s)?;
                c.prepare_cached("DELETE FROM groups WHERE tenant = ? AND id = ?")?
                    .execute(params![tenant, id])?;
                Ok(())
            },
            |_| true,
        )
        .await
    }

    // ---- lists -------------------------------------------------------------------------

    /// One page of users or groups matching `cond`, and the total count.
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
        if cond.as_ref().is_some_and(is_point_lookup) && sort.is_none() {
            return self.list_translated(
                tenant,
                rt.kind,
                cond.as_ref(),
                sort.as_ref(),
                page,
                with_related,
            );
        }
        // A scan (no filter, several terms, a substring or a JSON path) may take milliseconds
        // or more: off the async workers, so other requests and /healthz go on meanwhile.
        let (this, tenant, kind, page) = (self.clone(), tenant.to_string(), rt.kind, page.clone());
        tokio::task::spawn_blocking(move || {
            this.list_translated(
                &tenant,
                kind,
                cond.as_ref(),
                sort.as_ref(),
                &page,
                with_related,
            )
        })
        .await
        .map_err(task_failed)?
    }
}

/// An indexed look-up by one value (Entra's `userName eq "…"`, `externalId eq "…"`): it takes
/// microseconds, less than a hand-over to a blocking thread.
fn is_point_lookup(c: &Condition) -> bool {
    c.params.len() == 1
        && !c.sql.contains("json_")
        && !c.sql.contains("instr(")
        && !c.sql.contains("substr(")
        && !c.sql.contains(" OR ")
}

impl SqliteStaging {
    /// One page of users or groups matching `cond`, and the total count.
    fn list_translated(
        &self,
        tenant: &str,
        kind: ResourceKind,
        cond: Option<&Condition>,
        sort: Option<&Sort>,
        page: &Page,
        with_related: bool,
    ) -> Result<(i64, Vec<Stored>), StoreError> {
        let (table, live) = match kind {
            ResourceKind::User => ("users", " AND r.deleted_at IS NULL"),
            ResourceKind::Group => ("groups", ""),
        };
        let filter = cond.map(|c| format!(" AND {}", c.sql)).unwrap_or_default();
        let mut params: Vec<&dyn ToSql> = vec![&tenant];
        if let Some(c) = cond {
            params.extend(c.params.iter().map(|p| p as &dyn ToSql));
        }
        let count_sql = format!("SELECT count(*) FROM {table} r WHERE r.tenant = ?{live}{filter}");
        let order = match sort {
            Some(s) => format!(
                "{} {}, r.pk",
                s.expr,
                if s.descending { "DESC" } else { "ASC" }
            ),
            None => "r.pk".into(),
        };
        let page_sql = format!(
            "{}{filter} ORDER BY {order} LIMIT ? OFFSET ?",
            select_sql(kind, with_related)
        );
        let (count, offset) = (page.count, page.start_index - 1);
        let start_index = page.start_index;
        // Count and page on one connection, so both see the same snapshot.
        let (total, rows) = self.read_now(|c| {
            snapshot(c, || {
                let total: i64 = c
                    .prepare_cached(&count_sql)?
                    .query_row(&params[..], |r| r.get(0))?;
                if count <= 0 || total < start_index {
                    return Ok((total, vec![]));
                }
                let mut p = params.clone();
                p.extend([&count as &dyn ToSql, &offset]);
                let mut stmt = c.prepare_cached(&page_sql)?;
                let rows = stmt
                    .query_map(&p[..], read_row)?
                    .collect::<Result<Vec<Row>, _>>()?;
                Ok::<_, StoreError>((total, rows))
            })
        })?;
        let items = rows
            .into_iter()
            .map(|row| stored(kind, row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((total, items))
    }
}

enum Outcome {
    Retry,
    Unchanged,
    Written(i64),
}

/// id, doc, version, created, last_modified, related (JSON array of [id, kind-or-name]).
type Row = (String, String, i64, String, String, Option<String>);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

/// SELECT of live resources of `kind` for one tenant (first parameter), aliased `r`; groups
/// (of a user) or members (of a group) come as one JSON array column, in the same statement.
fn select_sql(kind: ResourceKind, with_related: bool) -> String {
    let (table, live, related) = match kind {
        ResourceKind::User => (
            "users",
            " AND r.deleted_at IS NULL",
            "(SELECT json_group_array(json_array(g.id, g.display_name)) FROM group_members m \
             JOIN groups g ON g.tenant = m.tenant AND g.id = m.group_id \
             WHERE m.tenant = r.tenant AND m.member_id = r.id)",
        ),
        ResourceKind::Group => (
            "groups",
            "",
            "(SELECT json_group_array(json_array(m.member_id, m.member_type)) FROM group_members m \
             WHERE m.tenant = r.tenant AND m.group_id = r.id)",
        ),
    };
    let related = if with_related { related } else { "NULL" };
    format!(
        "SELECT r.id, r.doc, r.change_seq, r.created, r.last_modified, {related} \
         FROM {table} r WHERE r.tenant = ?{live}"
    )
}

fn stored(kind: ResourceKind, row: Row) -> Result<Stored, StoreError> {
    let (id, doc, version, created, last_modified, related) = row;
    let related = match related {
        None => None,
        Some(json) => {
            let pairs: Vec<(String, String)> = serde_json::from_str(&json)?;
            Some(
                pairs
                    .into_iter()
                    .map(|(rid, second)| match kind {
                        // groups: [member id, member type]
                        ResourceKind::Group => Related {
                            id: rid,
                            kind: second,
                            display: None,
                        },
                        // users: [group id, group name], whatever the name is
                        ResourceKind::User => Related {
                            id: rid,
                            kind: "direct".into(),
                            display: Some(second),
                        },
                    })
                    .collect(),
            )
        }
    };
    Ok(Stored {
        id,
        doc,
        version,
        created,
        last_modified,
        related,
    })
}

impl ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Param::Text(s) => s.to_sql(),
            Param::Int(i) => i.to_sql(),
            Param::Real(f) => f.to_sql(),
        }
    }
}

fn next_seq(c: &Conn) -> Result<i64, StoreError> {
    Ok(
        c.prepare_cached("UPDATE change_seq SET value = value + 1 WHERE id = 1 RETURNING value")?
            .query_row([], |r| r.get(0))?,
    )
}

fn unique(e: rusqlite::Error, what: &str) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            StoreError::Conflict(what.into())
        }
        _ => StoreError::from(e),
    }
}

fn insert_emails(c: &Conn, tenant: &str, pk: i64, cols: &UserColumns) -> Result<(), StoreError> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO user_emails (user_pk, tenant, type_ci, value_ci, is_primary) VALUES (?, ?, ?, ?, ?)",
    )?;
    for e in &cols.emails {
        stmt.execute(params![pk, tenant, e.type_ci, e.value_ci, e.primary])?;
    }
    Ok(())
}

/// Stamp every user member of a group with `seq`, so the sync engine looks at them again.
fn stamp_members(c: &Conn, tenant: &str, group_id: &str, seq: i64) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE users SET change_seq = ?1 WHERE tenant = ?2 AND deleted_at IS NULL AND id IN \
         (SELECT member_id FROM group_members WHERE tenant = ?2 AND group_id = ?3 AND member_type = 'User')",
    )?
    .execute(params![seq, tenant, group_id])?;
    Ok(())
}

/// Take a user or group out of every group it is a member of; those groups get a new version.
fn remove_from_all_groups(
    c: &Conn,
    tenant: &str,
    member_id: &str,
    seq: i64,
    now_s: &str,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE groups SET change_seq = ?1, last_modified = ?2 WHERE tenant = ?3 AND id IN \
         (SELECT group_id FROM group_members WHERE tenant = ?3 AND member_id = ?4)",
    )?
    .execute(params![seq, now_s, tenant, member_id])?;
    c.prepare_cached("DELETE FROM group_members WHERE tenant = ? AND member_id = ?")?
        .execute(params![tenant, member_id])?;
    Ok(())
}

/// Apply member changes as row changes: O(members changed). Returns whether anything changed.
fn apply_member_ops(
    c: &Conn,
    tenant: &str,
    group_id: &str,
    ops: &[MemberOp],
    seq: i64,
) -> Result<bool, StoreError> {
    let mut changed = false;
    for op in ops {
        match op {
            MemberOp::RemoveAll => {
                stamp_members(c, tenant, group_id, seq)?;
                let n = c
                    .prepare_cached("DELETE FROM group_members WHERE tenant = ? AND group_id = ?")?
                    .execute(params![tenant, group_id])?;
                changed |= n > 0;
            }
            MemberOp::Add(members) => {
                let mut kind_of = c.prepare_cached(
                    "SELECT 'User' FROM users WHERE tenant = ?1 AND id = ?2 AND deleted_at IS NULL \
                     UNION ALL SELECT 'Group' FROM groups WHERE tenant = ?1 AND id = ?2",
                )?;
                let mut insert = c.prepare_cached(
                    "INSERT OR IGNORE INTO group_members (tenant, group_id, member_id, member_type) \
                     VALUES (?, ?, ?, ?)",
                )?;
                let mut stamp = c.prepare_cached(
                    "UPDATE users SET change_seq = ? WHERE tenant = ? AND id = ?",
                )?;
                for m in members {
                    if m.value == group_id {
                        return Err(ScimError::invalid_value(
                            "a group cannot be a member of itself",
                        )
                        .into());
                    }
                    let kind: Option<&'static str> = kind_of
                        .query_row(params![tenant, m.value], |r| {
                            Ok(if r.get_ref(0)?.as_str()? == "User" {
                                "User"
                            } else {
                                "Group"
                            })
                        })
                        .optional()?;
                    let kind = kind.ok_or_else(|| {
                        StoreError::Rejected(ScimError::invalid_value(format!(
                            "member {} is not a user or group of this tenant",
                            m.value
                        )))
                    })?;
                    if insert.execute(params![tenant, group_id, m.value, kind])? > 0 {
                        changed = true;
                        if kind == "User" {
                            stamp.execute(params![seq, tenant, m.value])?;
                        }
                    }
                }
            }
            MemberOp::Remove(ids) => {
                let mut delete = c.prepare_cached(
                    "DELETE FROM group_members WHERE tenant = ? AND group_id = ? AND member_id = ? \
                     RETURNING member_type",
                )?;
                let mut stamp = c.prepare_cached(
                    "UPDATE users SET change_seq = ? WHERE tenant = ? AND id = ?",
                )?;
                for id in ids {
                    let kind: Option<String> = delete
                        .query_row(params![tenant, group_id, id], |r| r.get(0))
                        .optional()?;
                    if let Some(kind) = kind {
                        changed = true;
                        if kind == "User" {
                            stamp.execute(params![seq, tenant, id])?;
                        }
                    }
                }
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::scim::Limits;
    use crate::scim::resource::{MemberRef, normalize};
    use crate::scim::schema::DEFAULT_CUSTOM_SCHEMA;
    use chrono::TimeZone;
    use serde_json::json;

    async fn store() -> (tempfile::TempDir, SqliteStaging) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStaging::open(&dir.path().join("s.db"), Durability::Normal)
            .await
            .unwrap();
        (dir, s)
    }

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, h, 0, 0).unwrap()
    }

    fn user(name: &str) -> Map<String, Value> {
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        normalize(
            &rt,
            &json!({"userName": name, "active": true,
            DEFAULT_CUSTOM_SCHEMA: {"customAttribute03": "C3"}}),
            &Limits::default(),
        )
        .unwrap()
        .doc
    }

    /// The benchmark's bulk load (the row functions on a connection of its own) writes the rows
    /// the API writes: the same columns, e-mail rows and group rows, so the sync engine reads
    /// the same thing either way.
    #[tokio::test]
    async fn bulk_rows_are_the_rows_the_api_writes() {
        let (d, s) = store().await;
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        let gt = ResourceType::group();
        let doc = normalize(
            &rt,
            &json!({"userName": "Ann", "externalId": "x1", "displayName": "Ann A", "active": false,
                "emails": [{"value": "Ann@Example.com", "type": "work", "primary": true}],
                DEFAULT_CUSTOM_SCHEMA: {"customAttribute03": "C3", "customAttribute16": "C16"}}),
            &Limits::default(),
        )
        .unwrap()
        .doc;
        let group = normalize(
            &gt,
            &json!({"displayName": "G", "externalId": "gx"}),
            &Limits::default(),
        )
        .unwrap()
        .doc;
        s.create_user("api", &rt, "u1", &doc, t(0), &RequestLog::default())
            .await
            .unwrap();
        s.create_group(
            "api",
            &gt,
            "g1",
            GroupChange::replace_members(group.clone(), None),
            t(0),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let c = Conn::open(d.path().join("s.db")).unwrap();
        let now = format_time(t(0));
        insert_user_row(
            &c,
            "bulk",
            "u1",
            &NewUserRow::of(&rt, &doc).unwrap(),
            1,
            &now,
        )
        .unwrap();
        let g = NewGroupRow::of(&gt, &group).unwrap();
        insert_group_row(&c, "bulk", "g1", &g, 2, &now).unwrap();
        insert_member_row(&c, "bulk", "g1", "u1").unwrap();
        raise_seq(&c, 1000).unwrap();
        let rows = |tenant: &str| {
            let sql = format!(
                "SELECT u.id, u.user_name, u.user_name_ci, u.external_id, u.display_name, u.active, \
                 u.deactivated_at, u.deleted_at, {}, u.doc, u.doc_ci, u.created, u.last_modified, \
                 (SELECT json_group_array(json_array(e.type_ci, e.value_ci, e.is_primary)) \
                  FROM user_emails e WHERE e.user_pk = u.pk AND e.tenant = u.tenant), \
                 (SELECT json_array(g.id, g.display_name, g.display_name_ci, g.external_id, g.doc, g.doc_ci) \
                  FROM groups g WHERE g.tenant = u.tenant) \
                 FROM users u WHERE u.tenant = ?",
                CUSTOM_COLUMNS.join(", ")
            );
            let mut stmt = c.prepare(&sql).unwrap();
            let n = stmt.column_count();
            stmt.query_row([tenant], |r| {
                (0..n)
                    .map(|i| r.get::<_, rusqlite::types::Value>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
        };
        let (api, bulk) = (rows("api"), rows("bulk"));
        assert_eq!(api, bulk);
        assert!(
            matches!(&api[6], rusqlite::types::Value::Text(_)),
            "inactive: deactivated_at set"
        );
        let high: i64 = c
            .query_row("SELECT value FROM change_seq WHERE id = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(high, 1000);
    }

    async fn row(s: &SqliteStaging, id: &str) -> (i64, Option<String>, i64, Option<String>) {
        s.read_now(|c| {
            Ok(c.query_row(
                "SELECT active, deactivated_at, change_seq, custom_attribute_03 FROM users WHERE id = ?",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?)
        })
        .unwrap()
    }

    #[tokio::test]
    async fn deactivation_clock_is_set_and_cleared() {
        let (_d, s) = store().await;
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        s.create_user("t", &rt, "u1", &user("ann"), t(0), &RequestLog::default())
            .await
            .unwrap();
        assert_eq!(
            row(&s, "u1").await.3.as_deref(),
            Some("C3"),
            "custom attributes are columns"
        );
        let off = |mut d: Map<String, Value>| {
            d.insert("active".into(), json!(false));
            Ok(d)
        };
        s.update_user("t", &rt, "u1", None, t(1), &off, &RequestLog::default())
            .await
            .unwrap();
        let (active, since, ..) = row(&s, "u1").await;
        assert_eq!(
            (active, since.as_deref()),
            (0, Some("2026-01-01T01:00:00.000Z"))
        );
        // Staying inactive keeps the original time.
        s.update_user(
            "t",
            &rt,
            "u1",
            None,
            t(2),
            &|mut d| {
                d.insert("displayName".into(), json!("x"));
                d.insert("active".into(), json!(false));
                Ok(d)
            },
            &RequestLog::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            row(&s, "u1").await.1.as_deref(),
            Some("2026-01-01T01:00:00.000Z")
        );
        s.update_user(
            "t",
            &rt,
            "u1",
            None,
            t(3),
            &|mut d| {
                d.insert("active".into(), json!(true));
                Ok(d)
            },
            &RequestLog::default(),
        )
        .await
        .unwrap();
        assert_eq!(row(&s, "u1").await.1, None);
    }

    #[test]
    fn each_update_variant_has_a_bind_per_placeholder() {
        for keys in [false, true] {
            for active in [false, true] {
                let sql = update_user_sql(keys, active);
                let binds = 1 + 16 + 6 + if keys { 3 } else { 0 } + if active { 4 } else { 0 };
                assert_eq!(sql.matches('?').count(), binds, "{sql}");
                assert_eq!(sql.contains("user_name_ci"), keys);
                assert_eq!(sql.contains("deactivated_at"), active);
            }
        }
    }

    #[tokio::test]
    async fn an_update_writes_the_key_columns_only_when_they_change() {
        let (_d, s) = store().await;
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        s.create_user("t", &rt, "u1", &user("ann"), t(0), &RequestLog::default())
            .await
            .unwrap();
        let cols = |s: &SqliteStaging| {
            s.read_now(|c| {
                Ok(c.query_row(
                    "SELECT user_name, user_name_ci, external_id, display_name FROM users WHERE id = 'u1'",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ))
                    },
                )?)
            })
            .unwrap()
        };
        let before = cols(&s);
        s.update_user(
            "t",
            &rt,
            "u1",
            None,
            t(1),
            &|mut d| {
                d.insert("displayName".into(), json!("Ann Other"));
                Ok(d)
            },
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let after = cols(&s);
        assert_eq!(
            (&after.0, &after.1, &after.2),
            (&before.0, &before.1, &before.2)
        );
        assert_eq!(after.3.as_deref(), Some("Ann Other"));
        s.update_user(
            "t",
            &rt,
            "u1",
            None,
            t(2),
            &|mut d| {
                d.insert("userName".into(), json!("Ann.B"));
                d.insert("externalId".into(), json!("x-9"));
                Ok(d)
            },
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let renamed = cols(&s);
        assert_eq!(
            (renamed.0.as_str(), renamed.1.as_str(), renamed.2.as_deref()),
            ("Ann.B", "ann.b", Some("x-9"))
        );
        // The index holds the new key (and only it).
        let by_index = |name: &str| {
            s.read_now(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM users INDEXED BY users_user_name \
                     WHERE tenant = 't' AND user_name_ci = ? AND deleted_at IS NULL",
                    [name],
                    |r| r.get::<_, i64>(0),
                )?)
            })
            .unwrap()
        };
        assert_eq!((by_index("ann.b"), by_index(&before.1)), (1, 0));
    }

    #[tokio::test]
    async fn membership_changes_stamp_the_member_users() {
        let (_d, s) = store().await;
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        let gt = ResourceType::group();
        s.create_user("t", &rt, "u1", &user("ann"), t(0), &RequestLog::default())
            .await
            .unwrap();
        s.create_user("t", &rt, "u2", &user("bob"), t(0), &RequestLog::default())
            .await
            .unwrap();
        let before = row(&s, "u1").await.2;
        let g = normalize(&gt, &json!({"displayName": "G"}), &Limits::default()).unwrap();
        let change =
            GroupChange::replace_members(g.doc, Some(vec![MemberRef { value: "u1".into() }]));
        s.create_group("t", &gt, "g1", change, t(1), &RequestLog::default())
            .await
            .unwrap();
        let after = row(&s, "u1").await.2;
        assert!(after > before, "adding u1 stamps it");
        assert!(row(&s, "u2").await.2 < after, "u2 was not touched");
        // An unknown member rolls the whole change back.
        let e = s
            .update_group(
                "t",
                &gt,
                "g1",
                None,
                t(2),
                &|doc| {
                    Ok(GroupChange {
                        doc,
                        members: vec![
                            MemberOp::Remove(vec!["u1".into()]),
                            MemberOp::Add(vec![MemberRef {
                                value: "nope".into(),
                            }]),
                        ],
                    })
                },
                &RequestLog::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Rejected(_)));
        let members = s.get_group("t", "g1", true).await.unwrap().related.unwrap();
        assert_eq!(members.len(), 1, "u1 is still a member");
        // A group may be called "User": it is still one of u1's groups.
        let g = normalize(&gt, &json!({"displayName": "User"}), &Limits::default()).unwrap();
        let change =
            GroupChange::replace_members(g.doc, Some(vec![MemberRef { value: "u1".into() }]));
        s.create_group("t", &gt, "g2", change, t(2), &RequestLog::default())
            .await
            .unwrap();
        let mut groups = s.get_user("t", "u1", true).await.unwrap().related.unwrap();
        groups.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            groups,
            vec![
                Related {
                    id: "g1".into(),
                    kind: "direct".into(),
                    display: Some("G".into())
                },
                Related {
                    id: "g2".into(),
                    kind: "direct".into(),
                    display: Some("User".into())
                },
            ]
        );
        // Deleting the user removes its memberships.
        s.delete_user("t", "u1", None, t(3), &RequestLog::default())
            .await
            .unwrap();
        let members = s.get_group("t", "g1", true).await.unwrap().related.unwrap();
        assert!(members.is_empty());
        assert!(matches!(
            s.get_user("t", "u1", false).await,
            Err(StoreError::NotFound)
        ));
    }

    /// Entra adds members in parallel batches: member-only changes do not contend on the
    /// group's version, so all of them land however many run at once.
    #[tokio::test]
    async fn concurrent_member_changes_all_land() {
        let (_d, s) = store().await;
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        let gt = ResourceType::group();
        let n = 2 * MAX_ATTEMPTS + 4;
        for i in 0..n {
            s.create_user(
                "t",
                &rt,
                &format!("u{i}"),
                &user(&format!("n{i}")),
                t(0),
                &RequestLog::default(),
            )
            .await
            .unwrap();
        }
        let g = normalize(&gt, &json!({"displayName": "G"}), &Limits::default()).unwrap();
        s.create_group(
            "t",
            &gt,
            "g1",
            GroupChange::replace_members(g.doc, None),
            t(0),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        let adds = (0..n).map(|i| {
            let (s, gt) = (s.clone(), &gt);
            async move {
                s.update_group(
                    "t",
                    gt,
                    "g1",
                    None,
                    t(1),
                    &|doc| {
                        Ok(GroupChange {
                            doc,
                            members: vec![MemberOp::Add(vec![MemberRef {
                                value: format!("u{i}"),
                            }])],
                        })
                    },
                    &RequestLog::default(),
                )
                .await
            }
        });
        for r in futures_util::future::join_all(adds).await {
            r.unwrap();
        }
        let members = s.get_group("t", "g1", true).await.unwrap().related.unwrap();
        assert_eq!(members.len(), n);
    }

    /// The look-ups Entra makes must be answered from indexes, never by scanning a tenant.
    #[tokio::test]
    async fn entra_lookups_use_indexes() {
        let (_d, s) = store().await;
        let users = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        let groups = ResourceType::group();
        let cases = [
            (&users, "userName eq \"a\"", "users_user_name"),
            (&users, "externalId eq \"a\"", "users_external_id"),
            (&users, "id eq \"a\"", "users_id"),
            (
                &users,
                "emails[type eq \"work\"].value eq \"a@b\"",
                "user_emails_value",
            ),
            (&groups, "displayName eq \"g\"", "groups_display_name"),
            (&groups, "externalId eq \"g\"", "groups_external_id"),
            (&groups, "members[value eq \"u\"]", "group_members_member"),
        ];
        for (rt, f, index) in cases {
            let cond = filter_sql::compile(
                rt,
                "t",
                &crate::scim::filter::parse_filter(f, &Limits::default()).unwrap(),
            )
            .unwrap();
            let sql = format!(
                "EXPLAIN QUERY PLAN {}{}",
                select_sql(rt.kind, true),
                format_args!(" AND {}", cond.sql)
            );
            let mut p: Vec<&dyn ToSql> = vec![&"t"];
            p.extend(cond.params.iter().map(|p| p as &dyn ToSql));
            let plan: Vec<String> = s
                .read_now(|c| {
                    let mut stmt = c.prepare(&sql)?;
                    let rows = stmt.query_map(&p[..], |r| r.get::<_, String>(3))?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .unwrap();
            let outer = &plan[0];
            assert!(plan.iter().any(|l| l.contains(index)), "{f}: {plan:?}");
            assert!(!plan.iter().any(|l| l.starts_with("SCAN")), "{f}: {plan:?}");
            // A search on the tenant alone would visit every row of the tenant.
            assert!(!outer.ends_with("(tenant=?)"), "{f}: {plan:?}");
        }
    }

    /// A plain list pages through the live rows in order, and counts them from the same
    /// index: no sort of the tenant's rows per page (an index without planner statistics once
    /// made SQLite pick it and sort every user for each page).
    #[tokio::test]
    async fn plain_lists_page_through_the_live_index() {
        let (_d, s) = store().await;
        for (kind, index) in [
            (ResourceKind::User, "users_live"),
            (ResourceKind::Group, "groups_tenant"),
        ] {
            let live = if kind == ResourceKind::User {
                " AND r.deleted_at IS NULL"
            } else {
                ""
            };
            let table = if kind == ResourceKind::User {
                "users"
            } else {
                "groups"
            };
            for sql in [
                format!(
                    "{} ORDER BY r.pk LIMIT 100 OFFSET 5000",
                    select_sql(kind, true)
                ),
                format!("SELECT count(*) FROM {table} r WHERE r.tenant = ?{live}"),
            ] {
                let plan: Vec<String> = s
                    .read_now(|c| {
                        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                        let rows = stmt.query_map([&"t"], |r| r.get::<_, String>(3))?;
                        Ok(rows.collect::<Result<Vec<_>, _>>()?)
                    })
                    .unwrap();
                assert!(plan[0].contains(index), "{sql}: {plan:?}");
                assert!(
                    !plan.iter().any(|l| l.contains("TEMP B-TREE")),
                    "{sql}: {plan:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn user_names_are_unique_per_tenant_case_insensitively() {
        let (_d, s) = store().await;
        let rt = ResourceType::user(DEFAULT_CUSTOM_SCHEMA);
        s.create_user("t", &rt, "u1", &user("Ann"), t(0), &RequestLog::default())
            .await
            .unwrap();
        let e = s
            .create_user("t", &rt, "u2", &user("aNN"), t(0), &RequestLog::default())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)));
        s.create_user(
            "other",
            &rt,
            "u3",
            &user("ann"),
            t(0),
            &RequestLog::default(),
        )
        .await
        .unwrap();
        // A deleted user's name can be taken again.
        s.delete_user("t", "u1", None, t(1), &RequestLog::default())
            .await
            .unwrap();
        s.create_user("t", &rt, "u4", &user("ANN"), t(2), &RequestLog::default())
            .await
            .unwrap();
        assert!(matches!(
            s.update_user(
                "t",
                &rt,
                "u4",
                Some(&[999]),
                t(3),
                &Ok,
                &RequestLog::default()
            )
            .await,
            Err(StoreError::VersionMismatch)
        ));
    }
}
