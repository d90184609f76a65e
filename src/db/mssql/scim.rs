//! The SQL Server staging store: the same operations as [`crate::store::SqliteStore`], with
//! the statements of [`super::statements`], on a bb8 pool of tiberius connections.
//!
//! Writes run in one transaction each (XACT_ABORT ON: any error rolls the whole write back).
//! Updates are optimistic like on SQLite: read, change, then a compare-and-swap on the version
//! inside the transaction, starting over when another writer came first. Every write takes its
//! change sequence value under the shared application lock described in [`super::statements::HIGH_SEQ`].

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use tiberius::{Query, Row};

use super::filter_sql::{Condition, Param};
use super::migrate;
use super::pool::{Client, MssqlError, MssqlPool};
use super::statements as st;
use crate::config::MssqlConfig;
use crate::scim::ScimError;
use crate::scim::patch::MemberOp;
use crate::scim::resource::fold_case;
use crate::scim::schema::{ResourceKind, ResourceType};
use crate::store::update::{self, Current, GroupUpdate, UserUpdate, check_version, group_columns};
use crate::store::{
    GroupChange, Page, Related, Sort, StoreError, Stored, UserColumns, format_time,
};

/// Optimistic read-modify-write gives up after this many concurrent changes of one resource.
const MAX_ATTEMPTS: usize = 8;

#[derive(Clone)]
pub struct MssqlStore {
    pool: MssqlPool,
}

impl From<MssqlError> for StoreError {
    fn from(e: MssqlError) -> Self {
        StoreError::SqlServer(e)
    }
}

impl From<tiberius::error::Error> for StoreError {
    fn from(e: tiberius::error::Error) -> Self {
        match e.code() {
            // Chosen as a deadlock victim, or a lock wait timed out: the client may retry.
            Some(1205 | 1222) => StoreError::Contended,
            // String or binary data would be truncated.
            Some(2628 | 8152) => StoreError::Rejected(ScimError::invalid_value(
                "a value is longer than the staging database allows",
            )),
            _ => StoreError::SqlServer(MssqlError::Database(e)),
        }
    }
}

pub(crate) fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc()
}

pub(crate) fn time_text(t: NaiveDateTime) -> String {
    format_time(Utc.from_utc_datetime(&t))
}

fn bind(q: &mut Query<'_>, p: &Param) {
    match p {
        Param::Text(s) => q.bind(s.clone()),
        Param::Int(i) => q.bind(*i),
        Param::Real(f) => q.bind(*f),
        Param::Bool(b) => q.bind(*b),
        Param::Time(t) => q.bind(*t),
        Param::NullText => q.bind(Option::<String>::None),
    }
}

fn text_param(v: &Option<String>) -> Param {
    v.clone().map_or(Param::NullText, Param::Text)
}

/// The parameters of [`st::UPDATE_USER`], in @P order, for a planned update of the user at
/// `pk` read at `version`, written with change sequence value `seq`.
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
        text_param(&cols.external_id),
        text_param(&cols.display_name),
        Param::Bool(cols.active),
        Param::Time(naive(now)),
    ];
    p.extend(cols.custom.iter().map(text_param));
    p.extend([
        Param::Text(text.to_string()),
        Param::Text(text_ci.to_string()),
        Param::Int(seq),
        Param::Int(pk),
        Param::Int(version),
    ]);
    p
}

/// A unique index refused the write: a conflict with `what`; anything else as it is.
fn unique(e: tiberius::error::Error, what: &str) -> StoreError {
    if matches!(e.code(), Some(2601 | 2627)) {
        StoreError::Conflict(what.into())
    } else {
        StoreError::from(e)
    }
}

pub(super) async fn simple(c: &mut Client, sql: &str) -> Result<(), StoreError> {
    c.simple_query(sql).await?.into_results().await?;
    Ok(())
}

/// The rows of the first result set that has any.
pub(crate) async fn rows(c: &mut Client, q: Query<'_>) -> Result<Vec<Row>, tiberius::error::Error> {
    Ok(q.query(c)
        .await?
        .into_results()
        .await?
        .into_iter()
        .find(|r| !r.is_empty())
        .unwrap_or_default())
}

pub(crate) async fn first(
    c: &mut Client,
    q: Query<'_>,
) -> Result<Option<Row>, tiberius::error::Error> {
    Ok(rows(c, q).await?.into_iter().next())
}

pub(crate) fn get_i64(r: &Row, i: usize) -> Result<i64, StoreError> {
    r.try_get::<i64, _>(i)?
        .ok_or_else(|| StoreError::CommitFailed(format!("column {i} is NULL")))
}

pub(crate) fn get_text(r: &Row, i: usize) -> Result<String, StoreError> {
    Ok(r.try_get::<&str, _>(i)?.unwrap_or_default().to_string())
}

pub(crate) fn get_time(r: &Row, i: usize) -> Result<String, StoreError> {
    r.try_get::<NaiveDateTime, _>(i)?
        .map(time_text)
        .ok_or_else(|| StoreError::CommitFailed(format!("column {i} is NULL")))
}

/// The next change sequence value (inside the caller's transaction).
async fn next_seq(c: &mut Client) -> Result<i64, StoreError> {
    let row = first(c, Query::new(st::NEXT_SEQ))
        .await?
        .ok_or_else(|| StoreError::CommitFailed("no change sequence value".into()))?;
    get_i64(&row, 0)
}

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
) -> Result<(), StoreError> {
    if cols.emails.is_empty() {
        return Ok(());
    }
    let mut q = Query::new(st::INSERT_USER_EMAILS);
    q.bind(pk);
    q.bind(tenant.to_string());
    q.bind(emails_json(cols));
    q.execute(c).await?;
    Ok(())
}

/// Run `body` in a transaction: committed when it returns Ok(Some), rolled back otherwise.
macro_rules! transaction {
    ($c:expr, $body:expr) => {{
        simple($c, "BEGIN TRANSACTION").await?;
        let r = $body.await;
        match r {
            Ok(Some(v)) => {
                simple($c, "COMMIT TRANSACTION").await?;
                Ok(Some(v))
            }
            other => {
                // XACT_ABORT may already have rolled back; only roll back what is open.
                let _ = simple($c, "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION").await;
                other
            }
        }
    }};
}

impl MssqlStore {
    /// Connect (failing fast with the server and database named), then migrate.
    pub async fn open(config: &MssqlConfig) -> Result<Self, StoreError> {
        let pool = MssqlPool::connect(config).await?;
        {
            let mut c = pool.get().await?;
            migrate::run(&mut c).await?;
        }
        Ok(MssqlStore { pool })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.pool.get().await?;
        simple(&mut c, st::PING).await
    }

    pub fn pool(&self) -> &MssqlPool {
        &self.pool
    }

    // ---- users -------------------------------------------------------------------------

    pub async fn create_user(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        doc: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<Stored, StoreError> {
        let cols = UserColumns::from_doc(doc, rt.custom_urn().unwrap_or_default());
        let doc_text = serde_json::to_string(doc)?;
        let doc_ci = serde_json::to_string(&fold_case(rt, doc))?;
        let mut c = self.pool.get().await?;
        let c = &mut *c;
        let seq: Option<i64> = transaction!(c, async {
            let seq = next_seq(c).await?;
            let mut q = Query::new(st::INSERT_USER.as_str());
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
                .map_err(|e| unique(e, "a user with this userName already exists"))?
                .ok_or_else(|| StoreError::CommitFailed("no row inserted".into()))?;
            let pk = get_i64(&row, 0)?;
            insert_emails(c, tenant, pk, &cols).await?;
            Ok::<_, StoreError>(Some(seq))
        })?;
        let now_s = format_time(now);
        Ok(Stored {
            id: id.to_string(),
            doc: doc_text,
            version: seq.unwrap_or_default(),
            created: now_s.clone(),
            last_modified: now_s,
            related: Some(vec![]),
        })
    }

    pub async fn get_user(
        &self,
        tenant: &str,
        id: &str,
        with_groups: bool,
    ) -> Result<Stored, StoreError> {
        self.get(tenant, ResourceKind::User, id, with_groups).await
    }

    pub async fn get_group(
        &self,
        tenant: &str,
        id: &str,
        with_members: bool,
    ) -> Result<Stored, StoreError> {
        self.get(tenant, ResourceKind::Group, id, with_members)
            .await
    }

    async fn get(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        with_related: bool,
    ) -> Result<Stored, StoreError> {
        let sql = st::get_sql(kind, with_related);
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
            ResourceKind::User => st::CURRENT_USER,
            ResourceKind::Group => st::CURRENT_GROUP,
        };
        let mut q = Query::new(sql);
        q.bind(tenant.to_string());
        q.bind(id.to_string());
        let mut c = self.pool.get().await?;
        let r = first(&mut c, q).await?.ok_or(StoreError::NotFound)?;
        Ok(Current {
            pk: get_i64(&r, 0)?,
            doc: get_text(&r, 1)?,
            version: get_i64(&r, 2)?,
            created: get_time(&r, 3)?,
            last_modified: get_time(&r, 4)?,
        })
    }

    /// Read-modify-write of one user with a compare-and-swap on its version.
    pub async fn update_user(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        change: impl Fn(Map<String, Value>) -> Result<Map<String, Value>, ScimError>,
    ) -> Result<Stored, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let cur = self.current(ResourceKind::User, tenant, id).await?;
            let Some(UserUpdate {
                cols,
                emails_changed,
                text: new_text,
                text_ci: new_ci,
            }) = update::plan_user(rt, &cur, if_match, &change)?
            else {
                return Ok(cur.unchanged(id));
            };
            let (pk, version) = (cur.pk, cur.version);
            let mut conn = self.pool.get().await?;
            let c = &mut *conn;
            let written: Option<i64> = transaction!(c, async {
                let seq = next_seq(c).await?;
                let mut q = Query::new(st::UPDATE_USER.as_str());
                for p in update_user_params(&cols, &new_text, &new_ci, now, seq, pk, version) {
                    bind(&mut q, &p);
                }
                let n: u64 = q
                    .execute(c)
                    .await
                    .map_err(|e| unique(e, "a user with this userName already exists"))?
                    .total();
                if n == 0 {
                    return Ok::<_, StoreError>(None);
                }
                if emails_changed {
                    let mut q = Query::new(st::DELETE_USER_EMAILS);
                    q.bind(pk);
                    q.execute(c).await?;
                    insert_emails(c, tenant, pk, &cols).await?;
                }
                Ok(Some(seq))
            })?;
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
    pub async fn delete_user(
        &self,
        tenant: &str,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let c = &mut *conn;
        transaction!(c, async {
            let mut q = Query::new(st::USER_VERSION_FOR_UPDATE);
            q.bind(tenant.to_string());
            q.bind(id.to_string());
            let row = first(c, q).await?.ok_or(StoreError::NotFound)?;
            check_version(if_match, get_i64(&row, 0)?)?;
            let seq = next_seq(c).await?;
            let mut q = Query::new(st::SOFT_DELETE_USER);
            q.bind(naive(now));
            q.bind(seq);
            q.bind(tenant.to_string());
            q.bind(id.to_string());
            let row = first(c, q).await?.ok_or(StoreError::NotFound)?;
            let mut q = Query::new(st::DELETE_USER_EMAILS);
            q.bind(get_i64(&row, 0)?);
            q.execute(c).await?;
            remove_from_all_groups(c, tenant, id, seq, now).await?;
            Ok::<_, StoreError>(Some(()))
        })?;
        Ok(())
    }

    // ---- groups ------------------------------------------------------------------------

    pub async fn create_group(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        change: GroupChange,
        now: DateTime<Utc>,
    ) -> Result<Stored, StoreError> {
        let (display, external_id) = group_columns(&change.doc);
        let doc_text = serde_json::to_string(&change.doc)?;
        let doc_ci = serde_json::to_string(&fold_case(rt, &change.doc))?;
        let mut conn = self.pool.get().await?;
        let c = &mut *conn;
        let seq: Option<i64> = transaction!(c, async {
            let seq = next_seq(c).await?;
            let mut q = Query::new(st::INSERT_GROUP);
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
                .map_err(|e| unique(e, "a group with this displayName already exists"))?;
            apply_member_ops(c, tenant, id, &change.members, seq).await?;
            Ok::<_, StoreError>(Some(seq))
        })?;
        let now_s = format_time(now);
        Ok(Stored {
            id: id.to_string(),
            doc: doc_text,
            version: seq.unwrap_or_default(),
            created: now_s.clone(),
            last_modified: now_s,
            related: None,
        })
    }

    /// Read-modify-write of one group: document and member rows, atomically.
    pub async fn update_group(
        &self,
        tenant: &str,
        rt: &ResourceType,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
        change: impl Fn(Map<String, Value>) -> Result<GroupChange, ScimError>,
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
            }) = update::plan_group(rt, &cur, if_match, &change)?
            else {
                return Ok(cur.unchanged(id));
            };
            let (pk, version) = (cur.pk, cur.version);
            let mut conn = self.pool.get().await?;
            let c = &mut *conn;
            let outcome: Option<Outcome> = transaction!(c, async {
                let mut q = Query::new(st::GROUP_VERSION_FOR_UPDATE);
                q.bind(pk);
                let current = match first(c, q).await? {
                    Some(r) => Some(get_i64(&r, 0)?),
                    None => None,
                };
                if current.is_none() || needs_version && current != Some(version) {
                    return Ok::<_, StoreError>(Some(Outcome::Retry));
                }
                let seq = next_seq(c).await?;
                let members_changed = apply_member_ops(c, tenant, id, &members, seq).await?;
                if !doc_changed && !members_changed {
                    // Nothing to commit; the rollback also returns the sequence value.
                    return Ok(None);
                }
                if doc_changed {
                    let mut q = Query::new(st::UPDATE_GROUP);
                    q.bind(display.clone());
                    q.bind(display.to_lowercase());
                    q.bind(external_id.clone());
                    q.bind(new_text.clone());
                    q.bind(new_ci.clone());
                    q.bind(seq);
                    q.bind(naive(now));
                    q.bind(pk);
                    q.bind(version);
                    q.execute(c)
                        .await
                        .map_err(|e| unique(e, "a group with this displayName already exists"))?;
                    if renamed {
                        stamp_members(c, tenant, id, seq).await?;
                    }
                } else {
                    let mut q = Query::new(st::STAMP_GROUP);
                    q.bind(seq);
                    q.bind(naive(now));
                    q.bind(pk);
                    q.execute(c).await?;
                }
                Ok(Some(Outcome::Written(seq)))
            })?;
            match outcome {
                Some(Outcome::Retry) => continue,
                None => return Ok(cur.unchanged(id)),
                Some(Outcome::Written(seq)) => {
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

    pub async fn delete_group(
        &self,
        tenant: &str,
        id: &str,
        if_match: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let c = &mut *conn;
        transaction!(c, async {
            let mut q = Query::new(st::GROUP_VERSION_BY_ID_FOR_UPDATE);
            q.bind(tenant.to_string());
            q.bind(id.to_string());
            let row = first(c, q).await?.ok_or(StoreError::NotFound)?;
            check_version(if_match, get_i64(&row, 0)?)?;
            let seq = next_seq(c).await?;
            stamp_members(c, tenant, id, seq).await?;
            let mut q = Query::new(st::DELETE_ALL_MEMBERS);
            q.bind(tenant.to_string());
            q.bind(id.to_string());
            q.execute(c).await?;
            remove_from_all_groups(c, tenant, id, seq, now).await?;
            let mut q = Query::new(st::DELETE_GROUP);
            q.bind(tenant.to_string());
            q.bind(id.to_string());
            q.execute(c).await?;
            Ok::<_, StoreError>(Some(()))
        })?;
        Ok(())
    }

    // ---- lists -------------------------------------------------------------------------

    /// One page of users or groups matching `cond` (compiled by [`super::filter_sql`]), and
    /// the total count, from one batch.
    pub async fn list(
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
        let count_sql = st::count_sql(kind, cond);
        let wants_page = page.count > 0;
        let sql = if wants_page {
            format!(
                "{count_sql}; {}",
                st::page_sql(kind, cond, sort, with_related).0
            )
        } else {
            count_sql
        };
        let mut q = Query::new(sql);
        for p in &base {
            bind(&mut q, p);
        }
        if wants_page {
            q.bind((page.start_index - 1).max(0));
            q.bind(page.count);
        }
        let mut c = self.pool.get().await?;
        let mut results = q.query(&mut c).await?.into_results().await?.into_iter();
        let total = match results.next().and_then(|r| r.into_iter().next()) {
            Some(r) => get_i64(&r, 0)?,
            None => 0,
        };
        let items = results
            .next()
            .unwrap_or_default()
            .iter()
            .map(|r| stored(kind, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((total, items))
    }
}

enum Outcome {
    Retry,
    Written(i64),
}

/// id, doc, change_seq, created, last_modified, related.
fn stored(kind: ResourceKind, r: &Row) -> Result<Stored, StoreError> {
    let related = match r.try_get::<&str, _>(5)? {
        None => None,
        Some(json) => {
            let items: Vec<Map<String, Value>> = serde_json::from_str(json)?;
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
        id: get_text(r, 0)?,
        doc: get_text(r, 1)?,
        version: get_i64(r, 2)?,
        created: get_time(r, 3)?,
        last_modified: get_time(r, 4)?,
        related,
    })
}

async fn stamp_members(
    c: &mut Client,
    tenant: &str,
    group_id: &str,
    seq: i64,
) -> Result<(), StoreError> {
    let mut q = Query::new(st::STAMP_GROUP_MEMBERS);
    q.bind(seq);
    q.bind(tenant.to_string());
    q.bind(group_id.to_string());
    q.execute(c).await?;
    Ok(())
}

async fn remove_from_all_groups(
    c: &mut Client,
    tenant: &str,
    member_id: &str,
    seq: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut q = Query::new(st::STAMP_GROUPS_OF_MEMBER);
    q.bind(seq);
    q.bind(naive(now));
    q.bind(tenant.to_string());
    q.bind(member_id.to_string());
    q.execute(c).await?;
    let mut q = Query::new(st::DELETE_MEMBERSHIPS_OF);
    q.bind(tenant.to_string());
    q.bind(member_id.to_string());
    q.execute(c).await?;
    Ok(())
}

async fn stamp_user(c: &mut Client, tenant: &str, id: &str, seq: i64) -> Result<(), StoreError> {
    let mut q = Query::new(st::STAMP_USER);
    q.bind(seq);
    q.bind(tenant.to_string());
    q.bind(id.to_string());
    q.execute(c).await?;
    Ok(())
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
                let mut q = Query::new(st::DELETE_ALL_MEMBERS);
                q.bind(tenant.to_string());
                q.bind(group_id.to_string());
                changed |= q.execute(c).await?.total() > 0;
            }
            MemberOp::Add(members) => {
                for m in members {
                    if m.value == group_id {
                        return Err(ScimError::invalid_value(
                            "a group cannot be a member of itself",
                        )
                        .into());
                    }
                    let mut q = Query::new(st::MEMBER_KIND);
                    q.bind(tenant.to_string());
                    q.bind(m.value.clone());
                    let kind = match first(c, q).await? {
                        Some(r) => get_text(&r, 0)?,
                        None => {
                            return Err(StoreError::Rejected(ScimError::invalid_value(format!(
                                "member {} is not a user or group of this tenant",
                                m.value
                            ))));
                        }
                    };
                    let mut q = Query::new(st::ADD_MEMBER);
                    q.bind(tenant.to_string());
                    q.bind(group_id.to_string());
                    q.bind(m.value.clone());
                    q.bind(kind.clone());
                    if q.execute(c).await?.total() > 0 {
                        changed = true;
                        if kind == "User" {
                            stamp_user(c, tenant, &m.value, seq).await?;
                        }
                    }
                }
            }
            MemberOp::Remove(ids) => {
                for id in ids {
                    let mut q = Query::new(st::REMOVE_MEMBER);
                    q.bind(tenant.to_string());
                    q.bind(group_id.to_string());
                    q.bind(id.clone());
                    if let Some(r) = first(c, q).await? {
                        changed = true;
                        if get_text(&r, 0)? == "User" {
                            stamp_user(c, tenant, id, seq).await?;
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
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::scim::Limits;
    use crate::scim::patch;
    use crate::scim::resource::normalize;
    use crate::scim::schema::DEFAULT_CUSTOM_SCHEMA;

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
        expected.extend((0..15).map(|_| Param::NullText));
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
            assert!(st::UPDATE_USER.contains(&format!("@P{i}")), "@P{i}");
        }
        assert!(!st::UPDATE_USER.contains("@P28"));
        assert_eq!(
            st::UPDATE_USER.as_str(),
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
