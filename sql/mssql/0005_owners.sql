-- Which tenant owns each application row the engine created or adopted: a tenant's sync never
-- updates or deletes a row another tenant owns, or one the application made itself (unless the
-- mapping adopts such rows, which records them here too). Mirrors sql/sqlite/0006_owners.sql
-- (sync_owners there), but for the key: SQL Server's index keys are at most 1700 bytes
-- (nonclustered; 900 clustered), so the four key columns are one unique nonclustered index
-- (2 * (128 + 128 + 128 + 450) = 1668 bytes) and the rows are clustered on an identity.

CREATE TABLE sync.owners (
    id          BIGINT IDENTITY (1, 1) NOT NULL,
    application NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,  -- the [applications.NAME] the mapping writes
    app_table   NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,  -- its user table
    scope       NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,  -- the tenant's name with a tenant column, '' without
    app_key     NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL,
    tenant      NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    user_id     NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,  -- the staged user the row was last written for
    how         NVARCHAR(16)  NOT NULL,                                  -- 'created' | 'adopted' | 'linked' (written by an earlier version)
    [at]        DATETIME2(3) NOT NULL,
    CONSTRAINT owners_pk PRIMARY KEY CLUSTERED (id)
);
-- Every read and write finds rows by this key; the owner is included so reads need no lookup.
CREATE UNIQUE INDEX owners_key ON sync.owners (application, app_table, scope, app_key) INCLUDE (tenant);
