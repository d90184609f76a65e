-- The provisioning log: one row per SCIM request a tenant's client made. Mirrors
-- sql/sqlite/0004_provisioning_log.sql. Only what the request was and how it ended: the path as
-- a route template (never a query string, so never a filter value) and the error detail of the
-- SCIM error body; never request or response bodies. Written in batches off the request path;
-- rows older than admin.provisioning_log_days are pruned.

CREATE TABLE scim.provisioning_log (
    id          BIGINT IDENTITY (1, 1) NOT NULL,
    tenant      NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    [at]        DATETIME2(3) NOT NULL,          -- when the request arrived, UTC
    request_id  NVARCHAR(200) NOT NULL,
    method      NVARCHAR(16)  NOT NULL,
    path        NVARCHAR(400) NOT NULL,         -- route template, e.g. /Users/{id}
    resource_id NVARCHAR(200) NULL,             -- the {id} of the path, or the id a POST created
    status      SMALLINT      NOT NULL,
    duration_ms FLOAT         NOT NULL,
    error       NVARCHAR(1000) NULL,            -- the SCIM error's detail, for error answers
    CONSTRAINT provisioning_log_pk PRIMARY KEY CLUSTERED (id)
);
-- Newest first per tenant, optionally within a time range; also pruning, tenant by tenant.
-- One index only: every request adds a row.
CREATE INDEX provisioning_log_tenant_at ON scim.provisioning_log (tenant, [at]);
