//! The engine's statements on SQL Server staging (schemas `scim` and `sync`), with the T-SQL of
//! [`crate::store::mssql::statements`]. A batch is read in two statements and recorded in a
//! handful of set-based ones (rows travel as one JSON parameter each), not one per user.

use std::collections::HashMap;

use bb8::PooledConnection;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Value, json};
use tiberius::{Query, Row};

use super::{
    Link, LinkWrite, Mark, NewOffboarding, NewRun, Queued, Read, Record, RunState, UserRow,
    item_json,
};
use crate::store::mssql::pool::{Client, MssqlPool, TiberiusManager};
use crate::store::mssql::statements as st;
use crate::store::mssql::store::{first, naive, rows};
use crate::sync::{Counts, ItemReport, RunStatus, SyncError};

/// A value the statement promised (a NULL or missing column is a broken promise, not data).
fn required<T>(v: Option<T>, what: &str) -> Result<T, SyncError> {
    v.ok_or_else(|| SyncError::Task(format!("SQL Server returned no {what}")))
}

fn text(r: &Row, i: usize) -> Result<String, SyncError> {
    Ok(required(r.try_get::<&str, _>(i)?, "text value")?.to_string())
}

fn opt_text(r: &Row, i: usize) -> Result<Option<String>, SyncError> {
    Ok(r.try_get::<&str, _>(i)?.map(str::to_string))
}

fn int(r: &Row, i: usize) -> Result<i64, SyncError> {
    required(r.try_get::<i64, _>(i)?, "integer")
}

fn bit(r: &Row, i: usize) -> Result<bool, SyncError> {
    required(r.try_get::<bool, _>(i)?, "bit")
}

/// A single number the statement always returns (COUNT_BIG, a BIT flag cast to INT…).
async fn scalar(c: &mut Client, q: Query<'_>) -> Result<i64, SyncError> {
    let row = required(first(c, q).await?, "row")?;
    int(&row, 0)
}

/// pk, id, user_name, doc, active, deleted, change_seq, groups (see SYNC_USER_COLUMNS).
fn user_row(r: &Row) -> Result<UserRow, SyncError> {
    Ok(UserRow {
        pk: int(r, 0)?,
        id: text(r, 1)?,
        user_name: text(r, 2)?,
        doc: text(r, 3)?,
        active: bit(r, 4)?,
        deleted: bit(r, 5)?,
        change_seq: int(r, 6)?,
        groups: opt_text(r, 7)?,
    })
}

fn user_rows(rows: Vec<Row>) -> Result<Vec<UserRow>, SyncError> {
    rows.iter().map(user_row).collect()
}

async fn connection(p: &MssqlPool) -> Result<PooledConnection<'_, TiberiusManager>, SyncError> {
    Ok(p.get().await?)
}

// ---- reads ------------------------------------------------------------------------------

pub async fn watermark(p: &MssqlPool, tenant: &str) -> Result<Mark, SyncError> {
    let mut q = Query::new(st::GET_WATERMARK);
    q.bind(tenant.to_string());
    let mut c = connection(p).await?;
    Ok(match first(&mut c, q).await? {
        Some(r) => Mark {
            seq: int(&r, 0)?,
            pk: int(&r, 1)?,
        },
        None => Mark::default(),
    })
}

/// Waits for the writers that took a value to end (see HIGH_SEQ).
pub async fn high_seq(p: &MssqlPool) -> Result<i64, SyncError> {
    let mut c = connection(p).await?;
    scalar(&mut c, Query::new(st::HIGH_SEQ_IN_TRANSACTION.as_str())).await
}

pub async fn count_changed(
    p: &MssqlPool,
    tenant: &str,
    after: Mark,
    high: i64,
) -> Result<i64, SyncError> {
    let mut q = Query::new(st::COUNT_CHANGED);
    q.bind(tenant.to_string());
    q.bind(after.seq);
    q.bind(after.pk);
    q.bind(high);
    let mut c = connection(p).await?;
    scalar(&mut c, q).await
}

pub async fn count_due(
    p: &MssqlPool,
    tenant: &str,
    cutoff: DateTime<Utc>,
    held_in: Option<i64>,
) -> Result<i64, SyncError> {
    let sql = st::count_due(held_in.is_some());
    let mut q = Query::new(sql);
    q.bind(tenant.to_string());
    q.bind(naive(cutoff));
    if let Some(run) = held_in {
        q.bind(run);
    }
    let mut c = connection(p).await?;
    scalar(&mut c, q).await
}

pub async fn due_users(
    p: &MssqlPool,
    tenant: &str,
    cutoff: DateTime<Utc>,
    held_in: Option<i64>,
    after_pk: i64,
    limit: u32,
) -> Result<Vec<UserRow>, SyncError> {
    let mut q = Query::new(st::due_users(held_in.is_some()));
    q.bind(tenant.to_string());
    q.bind(naive(cutoff));
    q.bind(after_pk);
    q.bind(i64::from(limit));
    if let Some(run) = held_in {
        q.bind(run);
    }
    let mut c = connection(p).await?;
    user_rows(rows(&mut c, q).await?)
}

async fn links_on(
    c: &mut Client,
    tenant: &str,
    ids: &[&str],
) -> Result<HashMap<String, Link>, SyncError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = Query::new(st::LINKS_FOR_USERS);
    q.bind(tenant.to_string());
    q.bind(serde_json::to_string(ids)?);
    rows(c, q)
        .await?
        .iter()
        .map(|r| {
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
        })
        .collect()
}

pub async fn links(
    p: &MssqlPool,
    tenant: &str,
    ids: &[&str],
) -> Result<HashMap<String, Link>, SyncError> {
    let mut c = connection(p).await?;
    links_on(&mut c, tenant, ids).await
}

pub async fn count_links(p: &MssqlPool, tenant: &str) -> Result<i64, SyncError> {
    let mut q = Query::new(st::COUNT_LINKS);
    q.bind(tenant.to_string());
    let mut c = connection(p).await?;
    scalar(&mut c, q).await
}

pub async fn queued(
    p: &MssqlPool,
    tenant: &str,
    after_id: i64,
    limit: u32,
) -> Result<Vec<Queued>, SyncError> {
    let mut q = Query::new(st::PENDING_OFFBOARDINGS);
    q.bind(tenant.to_string());
    q.bind(after_id);
    q.bind(i64::from(limit));
    let mut c = connection(p).await?;
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
            })
        })
        .collect()
}

pub async fn run_state(p: &MssqlPool, run_id: i64) -> Result<Option<RunState>, SyncError> {
    let mut q = Query::new(st::GET_RUN);
    q.bind(run_id);
    let mut c = connection(p).await?;
    let Some(r) = first(&mut c, q).await? else {
        return Ok(None);
    };
    Ok(Some(RunState {
        tenant: text(&r, 0)?,
        status: text(&r, 1)?,
        dry_run: bit(&r, 2)?,
        approved: r.try_get::<NaiveDateTime, _>(3)?.is_some(),
    }))
}

/// A batch of users (groups included) and their links: two statements on one connection;
/// then `then` on a blocking thread.
pub async fn read_batch<R, F>(
    p: &MssqlPool,
    tenant: &str,
    read: Read,
    limit: u32,
    then: F,
) -> Result<R, SyncError>
where
    R: Send + 'static,
    F: FnOnce(Vec<UserRow>, HashMap<String, Link>) -> Result<R, SyncError> + Send + 'static,
{
    let mut q = match read {
        Read::Changed { .. } => Query::new(st::CHANGED_USERS.as_str()),
        Read::Retry { .. } => Query::new(st::RETRY_USERS.as_str()),
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
    let mut c = connection(p).await?;
    let users = user_rows(rows(&mut c, q).await?)?;
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let links = links_on(&mut c, tenant, &ids).await?;
    drop(c);
    tokio::task::spawn_blocking(move || then(users, links))
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
}

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
fn retries_json(retries: &[(String, String)]) -> String {
    let rows: Vec<Value> = retries
        .iter()
        .map(|(user_id, error)| json!({"user_id": user_id, "error": error}))
        .collect();
    Value::Array(rows).to_string()
}

/// Record a batch in one transaction, set-based: the items, links and retries each travel as
/// one JSON parameter.
pub async fn record(p: &MssqlPool, r: Record) -> Result<(), SyncError> {
    let mut tx = MssqlTx::begin(p).await?;
    let now = naive(r.now);
    if !r.items.is_empty() {
        let mut q = Query::new(st::INSERT_RUN_ITEMS);
        q.bind(r.run_id);
        q.bind(items_json(&r.items)?);
        q.execute(tx.client()?).await?;
    }
    if !r.dry_run {
        let t = r.tenant.as_str();
        if !r.links.is_empty() {
            let mut q = Query::new(st::UPSERT_LINKS.as_str());
            q.bind(t.to_string());
            q.bind(links_json(&r.links)?);
            q.bind(now);
            q.execute(tx.client()?).await?;
        }
        if !r.retries.is_empty() {
            let mut q = Query::new(st::UPSERT_RETRIES.as_str());
            q.bind(t.to_string());
            q.bind(retries_json(&r.retries));
            q.bind(now);
            q.execute(tx.client()?).await?;
        }
        if !r.cleared.is_empty() {
            let mut q = Query::new(st::CLEAR_RETRIES);
            q.bind(t.to_string());
            q.bind(serde_json::to_string(&r.cleared)?);
            q.execute(tx.client()?).await?;
        }
        if let Some(mark) = r.advance {
            let mut q = Query::new(st::ADVANCE_WATERMARK);
            q.bind(t.to_string());
            q.bind(mark.seq);
            q.bind(mark.pk);
            q.bind(now);
            q.execute(tx.client()?).await?;
        }
        renew_lease(&mut tx, t, &r.holder, r.lease_expires).await?;
    }
    run_counts(
        &mut tx,
        r.run_id,
        RunStatus::Running,
        &r.counts,
        r.watermark_to,
        None,
        None,
    )
    .await?;
    tx.commit().await
}

// ---- transactions -----------------------------------------------------------------------

/// A transaction on a pooled connection (XACT_ABORT is on: an error rolls it all back).
/// Dropped without [`MssqlTx::commit`], it is rolled back before the connection is used again;
/// if that rollback cannot run (no runtime, a connection a command timeout left out of step),
/// the pool's check-out test finds the transaction still open and closes the connection.
pub struct MssqlTx {
    conn: Option<PooledConnection<'static, TiberiusManager>>,
}

impl MssqlTx {
    pub async fn begin(p: &MssqlPool) -> Result<MssqlTx, SyncError> {
        let mut conn = p.get_owned().await?;
        conn.simple_query("BEGIN TRANSACTION")
            .await?
            .into_results()
            .await?;
        Ok(MssqlTx { conn: Some(conn) })
    }

    fn client(&mut self) -> Result<&mut Client, SyncError> {
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(SyncError::Task("the transaction has ended".into())),
        }
    }

    pub async fn commit(mut self) -> Result<(), SyncError> {
        self.client()?
            .simple_query(st::APP_COMMIT)
            .await?
            .into_results()
            .await?;
        // Committed: the connection goes back to the pool as it is.
        self.conn = None;
        Ok(())
    }
}

impl Drop for MssqlTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Not committed (an error, or a stopped run): roll back what is still open, off the
        // caller's path, before the connection returns to the pool.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let rolled_back = async {
                    conn.simple_query(st::APP_ROLLBACK)
                        .await?
                        .into_results()
                        .await
                };
                if let Err(e) = rolled_back.await {
                    tracing::warn!(error = %crate::store::mssql::pool::redact(&e), "rolling back an abandoned staging transaction");
                }
            });
        }
    }
}

async fn exec(tx: &mut MssqlTx, q: Query<'_>) -> Result<u64, SyncError> {
    Ok(q.execute(tx.client()?).await?.total())
}

pub async fn acquire_lease(
    tx: &mut MssqlTx,
    tenant: &str,
    holder: &str,
    now: DateTime<Utc>,
    expires: DateTime<Utc>,
) -> Result<bool, SyncError> {
    let mut q = Query::new(st::ACQUIRE_LEASE);
    q.bind(tenant.to_string());
    q.bind(holder.to_string());
    q.bind(naive(now));
    q.bind(naive(expires));
    let row = required(first(tx.client()?, q).await?, "lease answer")?;
    bit(&row, 0)
}

pub async fn renew_lease(
    tx: &mut MssqlTx,
    tenant: &str,
    holder: &str,
    expires: DateTime<Utc>,
) -> Result<(), SyncError> {
    let mut q = Query::new(st::RENEW_LEASE);
    q.bind(naive(expires));
    q.bind(tenant.to_string());
    q.bind(holder.to_string());
    if exec(tx, q).await? == 0 {
        return Err(SyncError::LeaseLost);
    }
    Ok(())
}

pub async fn release_lease(tx: &mut MssqlTx, tenant: &str, holder: &str) -> Result<(), SyncError> {
    let mut q = Query::new(st::RELEASE_LEASE);
    q.bind(tenant.to_string());
    q.bind(holder.to_string());
    exec(tx, q).await.map(drop)
}

pub async fn lease_run(
    tx: &mut MssqlTx,
    tenant: &str,
    holder: &str,
    run_id: i64,
) -> Result<(), SyncError> {
    let mut q = Query::new(st::LEASE_RUN);
    q.bind(run_id);
    q.bind(tenant.to_string());
    q.bind(holder.to_string());
    exec(tx, q).await.map(drop)
}

pub async fn abandon_stale_runs(
    tx: &mut MssqlTx,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<(), SyncError> {
    let mut q = Query::new(st::ABANDON_STALE_RUNS);
    q.bind(naive(now));
    q.bind(tenant.to_string());
    exec(tx, q).await.map(drop)
}

pub async fn drop_orphan_retries(tx: &mut MssqlTx, tenant: &str) -> Result<(), SyncError> {
    let mut q = Query::new(st::DROP_ORPHAN_RETRIES);
    q.bind(tenant.to_string());
    exec(tx, q).await.map(drop)
}

pub async fn insert_run(tx: &mut MssqlTx, r: &NewRun<'_>) -> Result<i64, SyncError> {
    let ended = (r.status != RunStatus::Running).then(|| naive(r.started_at));
    let mut q = Query::new(st::INSERT_RUN);
    q.bind(r.tenant.to_string());
    q.bind(r.trigger.to_string());
    q.bind(r.dry_run);
    q.bind(r.full);
    q.bind(r.status.as_str());
    q.bind(naive(r.started_at));
    q.bind(ended);
    q.bind(r.watermark_from);
    q.bind(r.approves_run);
    let row = required(first(tx.client()?, q).await?, "run id")?;
    int(&row, 0)
}

/// UPDATE_RUN: a run's status, end, counts, watermark and error.
async fn run_counts(
    tx: &mut MssqlTx,
    run_id: i64,
    status: RunStatus,
    counts: &Counts,
    watermark_to: Option<i64>,
    ended_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> Result<(), SyncError> {
    let mut q = Query::new(st::UPDATE_RUN);
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
    ] {
        q.bind(i64::try_from(n).unwrap_or(i64::MAX));
    }
    q.bind(watermark_to);
    q.bind(error.map(str::to_string));
    q.bind(run_id);
    exec(tx, q).await.map(drop)
}

pub async fn update_run(
    tx: &mut MssqlTx,
    run_id: i64,
    status: RunStatus,
    counts: &Counts,
    watermark_to: Option<i64>,
    ended_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> Result<(), SyncError> {
    run_counts(tx, run_id, status, counts, watermark_to, ended_at, error).await
}

pub async fn approve_run(
    tx: &mut MssqlTx,
    run_id: i64,
    at: DateTime<Utc>,
    by: i64,
) -> Result<(), SyncError> {
    let mut q = Query::new(st::APPROVE_RUN);
    q.bind(naive(at));
    q.bind(by);
    q.bind(run_id);
    exec(tx, q).await.map(drop)
}

pub async fn insert_item(
    tx: &mut MssqlTx,
    run_id: i64,
    item: &ItemReport,
) -> Result<(), SyncError> {
    let j = item_json(item)?;
    let mut q = Query::new(st::INSERT_RUN_ITEM);
    q.bind(run_id);
    q.bind(item.user_id.clone());
    q.bind(item.user_name.clone());
    q.bind(item.app_key.clone());
    q.bind(item.outcome.as_str());
    q.bind(j.changes);
    q.bind(j.roles_added);
    q.bind(j.roles_removed);
    q.bind(item.error.clone());
    exec(tx, q).await.map(drop)
}

// ---- lifecycle --------------------------------------------------------------------------

/// The row stays locked (UPDLOCK) until the transaction ends, so a SCIM write that would
/// reactivate the user waits for the purge, then finds the user gone.
pub async fn unchanged_since_read(
    tx: &mut MssqlTx,
    tenant: &str,
    row: &UserRow,
) -> Result<bool, SyncError> {
    let mut q = Query::new(st::USER_SEQ_FOR_UPDATE);
    q.bind(tenant.to_string());
    q.bind(row.id.clone());
    let seq = match first(tx.client()?, q).await? {
        Some(r) => Some(int(&r, 0)?),
        None => None,
    };
    Ok(seq == Some(row.change_seq))
}

pub async fn key_shared(
    tx: &mut MssqlTx,
    tenant: &str,
    user_id: &str,
    app_key: &str,
) -> Result<bool, SyncError> {
    let mut q = Query::new(st::APP_KEY_TAKEN);
    q.bind(tenant.to_string());
    q.bind(app_key.to_string());
    q.bind(user_id.to_string());
    Ok(scalar(tx.client()?, q).await? > 0)
}

pub async fn queue_offboarding(tx: &mut MssqlTx, o: &NewOffboarding<'_>) -> Result<(), SyncError> {
    let mut q = Query::new(st::QUEUE_OFFBOARDING);
    q.bind(o.tenant.to_string());
    q.bind(o.user_id.to_string());
    q.bind(o.user_name.to_string());
    q.bind(o.app_key.to_string());
    q.bind(serde_json::to_string(o.action)?);
    q.bind(serde_json::to_string(o.roles)?);
    q.bind(naive(o.now));
    q.bind(o.run_id);
    exec(tx, q).await.map(drop)
}

pub async fn purge_user(
    tx: &mut MssqlTx,
    tenant: &str,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<(), SyncError> {
    let mut q = Query::new(st::COUNT_MEMBERSHIPS);
    q.bind(tenant.to_string());
    q.bind(user_id.to_string());
    if scalar(tx.client()?, q).await? > 0 {
        // The groups it leaves get a new version, like any membership change.
        let seq = scalar(tx.client()?, Query::new(st::NEXT_SEQ)).await?;
        let mut q = Query::new(st::STAMP_GROUPS_OF_MEMBER);
        q.bind(seq);
        q.bind(naive(now));
        q.bind(tenant.to_string());
        q.bind(user_id.to_string());
        exec(tx, q).await?;
        let mut q = Query::new(st::DELETE_MEMBERSHIPS_OF);
        q.bind(tenant.to_string());
        q.bind(user_id.to_string());
        exec(tx, q).await?;
    }
    // Emails go with the row (ON DELETE CASCADE).
    for sql in [st::PURGE_USER, st::DELETE_RETRY] {
        let mut q = Query::new(sql);
        q.bind(tenant.to_string());
        q.bind(user_id.to_string());
        exec(tx, q).await?;
    }
    Ok(())
}

pub async fn delete_link(tx: &mut MssqlTx, tenant: &str, user_id: &str) -> Result<(), SyncError> {
    let mut q = Query::new(st::DELETE_LINK);
    q.bind(tenant.to_string());
    q.bind(user_id.to_string());
    exec(tx, q).await.map(drop)
}

pub async fn offboarding_done(tx: &mut MssqlTx, tenant: &str, o: &Queued) -> Result<(), SyncError> {
    let mut q = Query::new(st::DELETE_OFFBOARDING);
    q.bind(o.id);
    exec(tx, q).await?;
    delete_link(tx, tenant, &o.user_id).await
}

pub async fn offboarding_failed(tx: &mut MssqlTx, id: i64, error: &str) -> Result<(), SyncError> {
    let mut q = Query::new(st::OFFBOARDING_FAILED);
    q.bind(error.to_string());
    q.bind(id);
    exec(tx, q).await.map(drop)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::sync::{Change, Outcome};

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
        assert_eq!(keys(&items), paths(st::INSERT_RUN_ITEMS));
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
        assert_eq!(keys(&links), paths(&st::UPSERT_LINKS));
        let retries = retries_json(&[("u2".into(), "refused".into())]);
        assert_eq!(keys(&retries), paths(&st::UPSERT_RETRIES));
    }
}
