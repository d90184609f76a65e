-- Which tenant owns each application row the engine created or adopted: a tenant's sync never
-- updates or deletes a row another tenant owns, or one the application made itself (unless the
-- mapping adopts such rows, which records them here too).
CREATE TABLE sync_owners (
    application TEXT NOT NULL,   -- the [applications.NAME] the mapping writes
    app_table   TEXT NOT NULL,   -- its user table
    scope       TEXT NOT NULL,   -- the tenant's name with a tenant column, '' without
    app_key     TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    user_id     TEXT NOT NULL,   -- the staged user the row was last written for
    how         TEXT NOT NULL,   -- 'created' | 'adopted' | 'linked' (written by an earlier version)
    at          TEXT NOT NULL,
    PRIMARY KEY (application, app_table, scope, app_key)
) WITHOUT ROWID;
