-- Crash recovery and quarantine.

-- Who runs each run (host, process, run) and when it last showed signs of life: a run left
-- `running` by a process that has stopped is closed as failed by the next run or start.
ALTER TABLE sync_runs ADD COLUMN holder TEXT;
ALTER TABLE sync_runs ADD COLUMN heartbeat_at TEXT;
-- Users a run skipped because they are quarantined.
ALTER TABLE sync_runs ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;

-- The staged version a user last failed on (a newer one releases its quarantine), and since
-- when it is quarantined (NULL: it is retried by every run).
ALTER TABLE sync_retry ADD COLUMN change_seq INTEGER;
ALTER TABLE sync_retry ADD COLUMN quarantined_at TEXT;

-- What operators did to the sync side: lease and quarantine releases, approvals.
CREATE TABLE sync_audit (
    id     INTEGER PRIMARY KEY,
    at     TEXT NOT NULL,
    tenant TEXT NOT NULL,
    actor  TEXT NOT NULL,            -- the admin token's name, or 'cli'
    action TEXT NOT NULL,            -- 'release_lease' | 'release_quarantine' | 'approve'
    detail TEXT                      -- JSON: what it applied to
);
CREATE INDEX sync_audit_tenant ON sync_audit (tenant, id DESC);
