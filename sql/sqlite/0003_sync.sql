-- The sync engine's state and ledger, beside the shadow directory it reads.

-- How far each tenant's incremental runs have committed: every user whose
-- (change_seq, pk) is at or below (change_seq, last_pk) has been synced (or recorded as failed
-- and put in sync_retry). The pk breaks ties: one membership change stamps many users with the
-- same change_seq, and a batch may end in the middle of them.
CREATE TABLE sync_watermarks (
    tenant     TEXT    PRIMARY KEY,
    change_seq INTEGER NOT NULL,
    last_pk    INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
) WITHOUT ROWID;

-- One row per staged user that has an application row: what was last written there.
CREATE TABLE sync_links (
    tenant        TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    app_key       TEXT NOT NULL,            -- the key column's value in the application table
    fingerprint   TEXT NOT NULL,            -- RenderedUser::fingerprint of the last applied render
    applied_roles TEXT NOT NULL,            -- JSON array: the roles this engine assigned (and may remove)
    fields        TEXT NOT NULL,            -- JSON object column → last applied value
    state         TEXT NOT NULL,            -- 'active' | 'deactivated'
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (tenant, user_id)
) WITHOUT ROWID;
CREATE INDEX sync_links_app_key ON sync_links (tenant, app_key);

-- The run ledger.
CREATE TABLE sync_runs (
    id             INTEGER PRIMARY KEY,
    tenant         TEXT    NOT NULL,
    trigger        TEXT    NOT NULL,        -- 'schedule' | 'cli' | 'api'
    dry_run        INTEGER NOT NULL,
    full           INTEGER NOT NULL,
    status         TEXT    NOT NULL,        -- 'running' | 'succeeded' | 'completed_with_errors' | 'failed' | 'skipped' | 'awaiting_approval'
    started_at     TEXT    NOT NULL,
    ended_at       TEXT,
    created        INTEGER NOT NULL DEFAULT 0,
    updated        INTEGER NOT NULL DEFAULT 0,
    unchanged      INTEGER NOT NULL DEFAULT 0,
    roles_added    INTEGER NOT NULL DEFAULT 0,
    roles_removed  INTEGER NOT NULL DEFAULT 0,
    deactivated    INTEGER NOT NULL DEFAULT 0,
    offboarded     INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    watermark_from INTEGER,
    watermark_to   INTEGER,
    error          TEXT,
    approves_run   INTEGER REFERENCES sync_runs (id),  -- set on a run that performs an approval
    approved_at    TEXT,                                -- set on an awaiting_approval run once approved
    approved_by    INTEGER REFERENCES sync_runs (id)
);
CREATE INDEX sync_runs_tenant ON sync_runs (tenant, id DESC);
CREATE INDEX sync_runs_status ON sync_runs (tenant, status, id DESC);

-- One row per user a run changed, would change (dry run), failed on, or offboarded.
CREATE TABLE sync_run_items (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
    user_id       TEXT    NOT NULL,
    user_name     TEXT,
    app_key       TEXT,
    outcome       TEXT    NOT NULL,         -- 'created' | 'updated' | 'deactivated' | 'failed' | 'offboarded' | 'purged' | 'offboarding_held'
    changes       TEXT,                     -- JSON object column → {"before": …, "after": …}
    roles_added   TEXT,                     -- JSON array
    roles_removed TEXT,                     -- JSON array
    error         TEXT
);
CREATE INDEX sync_run_items_run ON sync_run_items (run_id, outcome);
CREATE INDEX sync_run_items_user ON sync_run_items (user_id);

-- One run per tenant at a time, across processes: the holder renews expires_at per batch;
-- an expired lease may be taken over.
CREATE TABLE sync_leases (
    tenant      TEXT    PRIMARY KEY,
    holder      TEXT    NOT NULL,
    run_id      INTEGER,
    acquired_at TEXT    NOT NULL,
    expires_at  TEXT    NOT NULL
) WITHOUT ROWID;

-- Users whose last sync failed: processed again by the next run whatever the watermark.
CREATE TABLE sync_retry (
    tenant          TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    last_error      TEXT    NOT NULL,
    first_failed_at TEXT    NOT NULL,
    last_failed_at  TEXT    NOT NULL,
    PRIMARY KEY (tenant, user_id)
) WITHOUT ROWID;

-- Offboardings decided (the user is already purged from staging) and not yet applied to the
-- application. Written in the same transaction as the purge, removed once applied.
CREATE TABLE sync_offboarding (
    id         INTEGER PRIMARY KEY,
    tenant     TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    user_name  TEXT,
    app_key    TEXT    NOT NULL,
    action     TEXT    NOT NULL,            -- JSON: {"action": "none"|"delete"|"update", "fields": {…}}
    roles      TEXT    NOT NULL,            -- JSON array: the applied roles to remove
    queued_at  TEXT    NOT NULL,
    run_id     INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE UNIQUE INDEX sync_offboarding_user ON sync_offboarding (tenant, user_id);

-- The lifecycle pass looks for inactive and deleted users per tenant.
CREATE INDEX users_deactivated ON users (tenant, deactivated_at) WHERE deactivated_at IS NOT NULL;
