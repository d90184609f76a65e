-- The provisioning log: one row per SCIM request a tenant's client made. Only what the request
-- was and how it ended: the path as a route template (never a query string, so never a filter
-- value) and the error detail of the SCIM error body; never request or response bodies.
-- Written in batches off the request path; rows older than admin.provisioning_log_days are pruned.
CREATE TABLE provisioning_log (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    at          TEXT    NOT NULL,           -- when the request arrived: RFC 3339, UTC, milliseconds
    request_id  TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    path        TEXT    NOT NULL,           -- route template, e.g. /Users/{id}
    resource_id TEXT,                       -- the {id} of the path, or the id a POST created
    status      INTEGER NOT NULL,
    duration_ms REAL    NOT NULL,
    error       TEXT                        -- the SCIM error's detail, for error answers
);
-- Newest first per tenant, optionally within a time range; also pruning, tenant by tenant.
-- One index only: every request adds a row.
CREATE INDEX provisioning_log_tenant_at ON provisioning_log (tenant, at);
