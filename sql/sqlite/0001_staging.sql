-- The staging "operations" database: a shadow directory of what the identity provider sent.

-- One counter for the whole database. Every write transaction takes the next value and stamps
-- every row it touches with it, so "what changed since N" is one indexed range query.
-- SQLite serialises writers, so values become visible in commit order.
CREATE TABLE change_seq (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO change_seq (id, value) VALUES (1, 0);

CREATE TABLE users (
    pk             INTEGER PRIMARY KEY,
    tenant         TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    user_name      TEXT    NOT NULL,
    user_name_ci   TEXT    NOT NULL,          -- Unicode lower case, for case-insensitive uniqueness and look-ups
    external_id    TEXT,
    display_name   TEXT,
    active         INTEGER NOT NULL DEFAULT 1,
    deactivated_at TEXT,                      -- set when active goes true → false, cleared when it goes back
    deleted_at     TEXT,                      -- DELETE from the client: gone from SCIM at once, kept for the sync lifecycle
    custom_attribute_01 TEXT, custom_attribute_02 TEXT, custom_attribute_03 TEXT, custom_attribute_04 TEXT,
    custom_attribute_05 TEXT, custom_attribute_06 TEXT, custom_attribute_07 TEXT, custom_attribute_08 TEXT,
    custom_attribute_09 TEXT, custom_attribute_10 TEXT, custom_attribute_11 TEXT, custom_attribute_12 TEXT,
    custom_attribute_13 TEXT, custom_attribute_14 TEXT, custom_attribute_15 TEXT, custom_attribute_16 TEXT,
    doc            TEXT    NOT NULL,          -- the normalised resource (no id/meta/groups)
    doc_ci         TEXT    NOT NULL,          -- the same with case-insensitive strings lower-cased, for filters
    change_seq     INTEGER NOT NULL,          -- also the resource version (ETag)
    created        TEXT    NOT NULL,
    last_modified  TEXT    NOT NULL
);
CREATE UNIQUE INDEX users_id ON users (tenant, id);
CREATE UNIQUE INDEX users_user_name ON users (tenant, user_name_ci) WHERE deleted_at IS NULL;
CREATE INDEX users_external_id ON users (tenant, external_id);
CREATE INDEX users_change_seq ON users (tenant, change_seq);

-- emails[type eq "work"].value eq "…" is how Entra looks users up: answered from this index.
CREATE TABLE user_emails (
    user_pk    INTEGER NOT NULL REFERENCES users (pk) ON DELETE CASCADE,
    tenant     TEXT    NOT NULL,
    type_ci    TEXT,
    value_ci   TEXT    NOT NULL,
    is_primary INTEGER NOT NULL
);
CREATE INDEX user_emails_value ON user_emails (tenant, value_ci);
CREATE INDEX user_emails_user ON user_emails (user_pk);

CREATE TABLE groups (
    pk              INTEGER PRIMARY KEY,
    tenant          TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    display_name    TEXT    NOT NULL,
    display_name_ci TEXT    NOT NULL,
    external_id     TEXT,
    doc             TEXT    NOT NULL,
    doc_ci          TEXT    NOT NULL,
    change_seq      INTEGER NOT NULL,
    created         TEXT    NOT NULL,
    last_modified   TEXT    NOT NULL
);
CREATE UNIQUE INDEX groups_id ON groups (tenant, id);
CREATE UNIQUE INDEX groups_display_name ON groups (tenant, display_name_ci);
CREATE INDEX groups_external_id ON groups (tenant, external_id);
CREATE INDEX groups_change_seq ON groups (tenant, change_seq);

-- One row per membership: adding or removing a member never rewrites the group.
CREATE TABLE group_members (
    tenant      TEXT NOT NULL,
    group_id    TEXT NOT NULL,
    member_id   TEXT NOT NULL,
    member_type TEXT NOT NULL,               -- 'User' or 'Group'
    PRIMARY KEY (tenant, group_id, member_id)
) WITHOUT ROWID;
CREATE INDEX group_members_member ON group_members (tenant, member_id);
