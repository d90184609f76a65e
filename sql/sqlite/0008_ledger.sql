-- Ledger completeness: what an offboarding did, who approved a held run, and what run
-- retention prunes.

-- The offboarding action an item records: 'delete' | 'update' | 'none' (the roles the engine
-- applied are removed whatever the action); NULL on items that are no offboarding.
ALTER TABLE sync_run_items ADD COLUMN action TEXT;

-- Who approved an awaiting_approval run: the admin token's name, or 'cli'.
ALTER TABLE sync_runs ADD COLUMN approver TEXT;

-- Run retention walks each tenant's ended runs by age.
CREATE INDEX sync_runs_started ON sync_runs (started_at);
