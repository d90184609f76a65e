-- Ledger completeness: what an offboarding did, who approved a held run, and what run
-- retention prunes. Mirrors sql/sqlite/0008_ledger.sql. One column per ALTER TABLE; the index
-- in a batch of its own.

-- The offboarding action an item records: 'delete' | 'update' | 'none' (the roles the engine
-- applied are removed whatever the action); NULL on items that are no offboarding.
ALTER TABLE sync.run_items ADD action NVARCHAR(16) NULL;

-- Who approved an awaiting_approval run: the admin token's name, or 'cli'.
ALTER TABLE sync.runs ADD approver NVARCHAR(256) NULL;
GO
-- Run retention walks each tenant's ended runs by age.
CREATE INDEX runs_started ON sync.runs (started_at);
