-- The sync engine's state and ledger, in schema sync beside the shadow directory it reads.
-- Mirrors sql/sqlite/0003_sync.sql (tables sync_* there are sync.* here). JSON columns are
-- checked with ISJSON; identifiers compared by the engine use the binary collation, like scim.*.

CREATE SCHEMA sync;
GO

-- How far each tenant's incremental runs have committed: every user whose (change_seq, pk) is
-- at or below (change_seq, last_pk) has been synced (or recorded as failed and put in
-- sync.retry). The pk breaks ties between users stamped with one change_seq.
CREATE TABLE sync.watermarks (
    tenant     NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    change_seq BIGINT NOT NULL,
    last_pk    BIGINT NOT NULL,
    updated_at DATETIME2(3) NOT NULL,
    CONSTRAINT watermarks_pk PRIMARY KEY CLUSTERED (tenant)
);

-- One row per staged user that has an application row: what was last written there.
CREATE TABLE sync.links (
    tenant        NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    user_id       NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    app_key       NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL,  -- the key column's value in the application table
    fingerprint   NVARCHAR(128) NOT NULL,                                  -- hash of the last applied render
    applied_roles NVARCHAR(MAX) NOT NULL,                                  -- JSON array: the roles this engine assigned
    fields        NVARCHAR(MAX) NOT NULL,                                  -- JSON object column -> last applied value
    state         NVARCHAR(16)  NOT NULL,
    updated_at    DATETIME2(3) NOT NULL,
    CONSTRAINT links_pk PRIMARY KEY CLUSTERED (tenant, user_id),
    CONSTRAINT links_state CHECK (state IN (N'active', N'deactivated')),
    CONSTRAINT links_applied_roles_is_json CHECK (ISJSON(applied_roles) = 1),
    CONSTRAINT links_fields_is_json CHECK (ISJSON(fields) = 1)
);
CREATE INDEX links_app_key ON sync.links (tenant, app_key);
GO

-- The run ledger. [trigger] and [full] are reserved words in T-SQL and stay bracketed.
CREATE TABLE sync.runs (
    id             BIGINT IDENTITY (1, 1) NOT NULL,
    tenant         NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    [trigger]      NVARCHAR(16)  NOT NULL,   -- 'schedule' | 'cli' | 'api'
    dry_run        BIT NOT NULL,
    [full]         BIT NOT NULL,
    status         NVARCHAR(32)  NOT NULL,   -- 'running' | 'succeeded' | 'completed_with_errors' | 'failed' | 'skipped' | 'awaiting_approval'
    started_at     DATETIME2(3) NOT NULL,
    ended_at       DATETIME2(3) NULL,
    created        INT NOT NULL CONSTRAINT runs_created_default DEFAULT 0,
    updated        INT NOT NULL CONSTRAINT runs_updated_default DEFAULT 0,
    unchanged      INT NOT NULL CONSTRAINT runs_unchanged_default DEFAULT 0,
    roles_added    INT NOT NULL CONSTRAINT runs_roles_added_default DEFAULT 0,
    roles_removed  INT NOT NULL CONSTRAINT runs_roles_removed_default DEFAULT 0,
    deactivated    INT NOT NULL CONSTRAINT runs_deactivated_default DEFAULT 0,
    offboarded     INT NOT NULL CONSTRAINT runs_offboarded_default DEFAULT 0,
    failed         INT NOT NULL CONSTRAINT runs_failed_default DEFAULT 0,
    watermark_from BIGINT NULL,
    watermark_to   BIGINT NULL,
    error          NVARCHAR(MAX) NULL,
    approves_run   BIGINT NULL,              -- set on a run that performs an approval
    approved_at    DATETIME2(3) NULL,        -- set on an awaiting_approval run once approved
    approved_by    BIGINT NULL,
    CONSTRAINT runs_pk PRIMARY KEY CLUSTERED (id),
    CONSTRAINT runs_approves_run_fk FOREIGN KEY (approves_run) REFERENCES sync.runs (id),
    CONSTRAINT runs_approved_by_fk FOREIGN KEY (approved_by) REFERENCES sync.runs (id)
);
CREATE INDEX runs_tenant ON sync.runs (tenant, id DESC);
CREATE INDEX runs_status ON sync.runs (tenant, status, id DESC);

-- One row per user a run changed, would change (dry run), failed on, or offboarded.
CREATE TABLE sync.run_items (
    id            BIGINT IDENTITY (1, 1) NOT NULL,
    run_id        BIGINT NOT NULL,
    user_id       NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    user_name     NVARCHAR(256) NULL,
    app_key       NVARCHAR(450) NULL,
    outcome       NVARCHAR(32)  NOT NULL,   -- 'created' | 'updated' | 'deactivated' | 'failed' | 'offboarded' | 'purged' | 'offboarding_held'
    changes       NVARCHAR(MAX) NULL,       -- JSON object column -> {"before": ..., "after": ...}
    roles_added   NVARCHAR(MAX) NULL,       -- JSON array
    roles_removed NVARCHAR(MAX) NULL,       -- JSON array
    error         NVARCHAR(MAX) NULL,
    CONSTRAINT run_items_pk PRIMARY KEY CLUSTERED (id),
    CONSTRAINT run_items_run_fk FOREIGN KEY (run_id) REFERENCES sync.runs (id) ON DELETE CASCADE
);
CREATE INDEX run_items_run ON sync.run_items (run_id, outcome);
CREATE INDEX run_items_user ON sync.run_items (user_id);
GO

-- One run per tenant at a time, across processes and replicas: the holder renews expires_at per
-- batch; an expired lease may be taken over.
CREATE TABLE sync.leases (
    tenant      NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    holder      NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    run_id      BIGINT NULL,
    acquired_at DATETIME2(3) NOT NULL,
    expires_at  DATETIME2(3) NOT NULL,
    CONSTRAINT leases_pk PRIMARY KEY CLUSTERED (tenant)
);

-- Users whose last sync failed: processed again by the next run whatever the watermark.
CREATE TABLE sync.retry (
    tenant          NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    user_id         NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    attempts        INT NOT NULL,
    last_error      NVARCHAR(MAX) NOT NULL,
    first_failed_at DATETIME2(3) NOT NULL,
    last_failed_at  DATETIME2(3) NOT NULL,
    CONSTRAINT retry_pk PRIMARY KEY CLUSTERED (tenant, user_id)
);

-- Offboardings decided (the user is already purged from staging) and not yet applied to the
-- application. Written in the same transaction as the purge, removed once applied.
CREATE TABLE sync.offboarding (
    id         BIGINT IDENTITY (1, 1) NOT NULL,
    tenant     NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    user_id    NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    user_name  NVARCHAR(256) NULL,
    app_key    NVARCHAR(450) NOT NULL,
    action     NVARCHAR(MAX) NOT NULL,      -- JSON: {"action": "none"|"delete"|"update", "fields": {...}}
    roles      NVARCHAR(MAX) NOT NULL,      -- JSON array: the applied roles to remove
    queued_at  DATETIME2(3) NOT NULL,
    run_id     BIGINT NOT NULL,
    attempts   INT NOT NULL CONSTRAINT offboarding_attempts_default DEFAULT 0,
    last_error NVARCHAR(MAX) NULL,
    CONSTRAINT offboarding_pk PRIMARY KEY CLUSTERED (id)
);
CREATE UNIQUE INDEX offboarding_user ON sync.offboarding (tenant, user_id);
GO

-- The lifecycle pass looks for inactive and deleted users per tenant.
CREATE INDEX users_deactivated ON scim.users (tenant, deactivated_at) WHERE deactivated_at IS NOT NULL;
