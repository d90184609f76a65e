-- Planner statistics for the indexes added since 0002_plan_hints.sql. An index without them
-- looks to SQLite as if `tenant = ?` matched ten rows: it took users_user_name_all for a
-- plain list of a tenant's users and sorted them all for every page, instead of paging
-- through users_live. These figures describe the shape of the data, as in 0002; ANALYZE
-- replaces them with measured ones. users_user_name_all holds deleted users too, so a tenant has
-- more rows there than in users_live.
INSERT OR REPLACE INTO sqlite_stat1 (tbl, idx, stat) VALUES
    ('users', 'users_user_name_all', '120000 60000 1'),
    ('users', 'users_deactivated', '10000 5000 1'),
    ('provisioning_log', 'provisioning_log_tenant_at', '1000000 500000 1'),
    ('provisioning_log', 'provisioning_log_resource', '500000 250000 10'),
    ('provisioning_log', 'provisioning_log_user_name', '100000 50000 10'),
    ('provisioning_log', 'provisioning_log_external_id', '100000 50000 10'),
    ('provisioning_log', 'provisioning_log_request', '1000000 1'),
    ('sync_retry', 'sync_retry_since', '1000 500 1'),
    ('sync_runs', 'sync_runs_tenant', '10000 5000 1'),
    ('sync_runs', 'sync_runs_status', '10000 5000 1000 1'),
    ('sync_runs', 'sync_runs_started', '10000 1');
