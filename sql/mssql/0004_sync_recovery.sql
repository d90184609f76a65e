-- Crash recovery and quarantine. Mirrors sql/sqlite/0005_sync_recovery.sql (tables sync_* there
-- are sync.* here). One column per ALTER TABLE: T-SQL takes a list after one ADD, the parse
-- check (sqlparser) does not.

-- Who runs each run (host, process, run) and when it last showed signs of life: a run left
-- `running` by a process that has stopped is closed as failed by the next run or start.
ALTER TABLE sync.runs ADD holder NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NULL;
ALTER TABLE sync.runs ADD heartbeat_at DATETIME2(3) NULL;
-- Users a run skipped because they are quarantined.
ALTER TABLE sync.runs ADD quarantined INT NOT NULL CONSTRAINT runs_quarantined_default DEFAULT 0;

-- The staged version a user last failed on (a newer one releases its quarantine), and since
-- when it is quarantined (NULL: it is retried by every run).
ALTER TABLE sync.retry ADD change_seq BIGINT NULL;
ALTER TABLE sync.retry ADD quarantined_at DATETIME2(3) NULL;
GO

-- What operators did to the sync side: lease and quarantine releases, approvals.
CREATE TABLE sync.audit (
    id     BIGINT IDENTITY (1, 1) NOT NULL,
    [at]   DATETIME2(3) NOT NULL,
    tenant NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    actor  NVARCHAR(256) NOT NULL,      -- the admin token's name, or 'cli'
    action NVARCHAR(32)  NOT NULL,      -- 'release_lease' | 'release_quarantine' | 'approve'
    detail NVARCHAR(MAX) NULL,          -- JSON: what it applied to
    CONSTRAINT audit_pk PRIMARY KEY CLUSTERED (id),
    CONSTRAINT audit_detail_is_json CHECK (detail IS NULL OR ISJSON(detail) = 1)
);
CREATE INDEX audit_tenant ON sync.audit (tenant, id DESC);
