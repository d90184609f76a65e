-- Where a SCIM write's provisioning log entry is written, in the write's own transaction: an
-- append to a table without secondary indexes costs the write almost nothing, where a row of
-- provisioning_log updates five indexes, two of them at random pages (userName, externalId).
-- The log's writer moves these rows into provisioning_log in batches every half second (and
-- at start, after a crash), so each index page is written once per batch, not once per write.
CREATE TABLE provisioning_log_inbox (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    at          TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    resource_id TEXT,
    status      INTEGER NOT NULL,
    duration_ms REAL    NOT NULL,
    error       TEXT,
    user_name   TEXT,
    external_id TEXT
);
