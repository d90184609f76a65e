-- The staging "operations" database on SQL Server: the shadow directory of what the identity
-- provider sent, in schema scim. Mirrors sql/sqlite/0001_staging.sql and 0002_plan_hints.sql.
-- Batches are separated by GO lines; the migrator runs each file in one transaction.
--
-- Case-insensitivity does not depend on the server's or database's collation: the *_ci columns
-- hold Unicode lower case computed by the service (the same function as on SQLite), and every
-- column that is compared or unique-indexed is declared with the binary collation
-- Latin1_General_100_BIN2, so equality is code-unit equality of the folded text, exactly as
-- on SQLite. Columns that are only returned, never compared, keep the database default.
-- All timestamps are UTC.

CREATE SCHEMA scim;
GO

-- One counter for the whole database; every write transaction takes the next value and stamps
-- every row it touches with it. Writers take it under a shared application lock
-- (N'scim.change_seq'); the sync engine briefly takes that lock exclusively to learn the highest
-- value whose transactions have all ended (see docs/sqlserver.md).
CREATE SEQUENCE scim.change_seq AS BIGINT START WITH 1 INCREMENT BY 1 NO CYCLE CACHE 50;
GO

CREATE TABLE scim.users (
    pk             BIGINT IDENTITY (1, 1) NOT NULL,
    tenant         NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    id             NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    user_name      NVARCHAR(256) NOT NULL,
    user_name_ci   NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,  -- Unicode lower case
    external_id    NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NULL,      -- caseExact
    display_name   NVARCHAR(512) NULL,
    active         BIT NOT NULL CONSTRAINT users_active_default DEFAULT 1,
    deactivated_at DATETIME2(3) NULL,   -- set when active goes true -> false, cleared when it goes back
    deleted_at     DATETIME2(3) NULL,   -- DELETE from the client: gone from SCIM at once, kept for the sync lifecycle
    custom_attribute_01 NVARCHAR(4000) NULL,
    custom_attribute_02 NVARCHAR(4000) NULL,
    custom_attribute_03 NVARCHAR(4000) NULL,
    custom_attribute_04 NVARCHAR(4000) NULL,
    custom_attribute_05 NVARCHAR(4000) NULL,
    custom_attribute_06 NVARCHAR(4000) NULL,
    custom_attribute_07 NVARCHAR(4000) NULL,
    custom_attribute_08 NVARCHAR(4000) NULL,
    custom_attribute_09 NVARCHAR(4000) NULL,
    custom_attribute_10 NVARCHAR(4000) NULL,
    custom_attribute_11 NVARCHAR(4000) NULL,
    custom_attribute_12 NVARCHAR(4000) NULL,
    custom_attribute_13 NVARCHAR(4000) NULL,
    custom_attribute_14 NVARCHAR(4000) NULL,
    custom_attribute_15 NVARCHAR(4000) NULL,
    custom_attribute_16 NVARCHAR(4000) NULL,
    doc            NVARCHAR(MAX) NOT NULL,                                  -- the normalised resource (no id/meta/groups)
    doc_ci         NVARCHAR(MAX) COLLATE Latin1_General_100_BIN2 NOT NULL,  -- the same with case-insensitive strings lower-cased
    change_seq     BIGINT NOT NULL,                                         -- also the resource version (ETag)
    created        DATETIME2(3) NOT NULL,
    last_modified  DATETIME2(3) NOT NULL,
    CONSTRAINT users_pk PRIMARY KEY CLUSTERED (pk),
    CONSTRAINT users_doc_is_json CHECK (ISJSON(doc) = 1),
    CONSTRAINT users_doc_ci_is_json CHECK (ISJSON(doc_ci) = 1)
);
CREATE UNIQUE INDEX users_id ON scim.users (tenant, id);
-- userName is unique per tenant among live users only: a deleted user keeps its row (and name)
-- until the sync lifecycle purges it, and the name may be provisioned again meanwhile.
CREATE UNIQUE INDEX users_user_name ON scim.users (tenant, user_name_ci) WHERE deleted_at IS NULL;
CREATE INDEX users_external_id ON scim.users (tenant, external_id);
-- The sync engine's range read: (change_seq, pk) comes with the clustered key.
CREATE INDEX users_change_seq ON scim.users (tenant, change_seq);
-- Live rows per tenant in insertion order: plain lists and counts page through this index.
CREATE INDEX users_live ON scim.users (tenant) WHERE deleted_at IS NULL;
GO

-- emails[type eq "work"].value eq "..." is how Entra looks users up: answered from this index.
CREATE TABLE scim.user_emails (
    user_pk    BIGINT NOT NULL,
    tenant     NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    type_ci    NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NULL,
    value_ci   NVARCHAR(320) COLLATE Latin1_General_100_BIN2 NOT NULL,
    is_primary BIT NOT NULL,
    CONSTRAINT user_emails_user_fk FOREIGN KEY (user_pk) REFERENCES scim.users (pk) ON DELETE CASCADE
);
CREATE CLUSTERED INDEX user_emails_user ON scim.user_emails (user_pk);
CREATE INDEX user_emails_value ON scim.user_emails (tenant, value_ci);
GO

CREATE TABLE scim.groups (
    pk              BIGINT IDENTITY (1, 1) NOT NULL,
    tenant          NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    id              NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    display_name    NVARCHAR(256) NOT NULL,
    display_name_ci NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    external_id     NVARCHAR(256) COLLATE Latin1_General_100_BIN2 NULL,
    doc             NVARCHAR(MAX) NOT NULL,
    doc_ci          NVARCHAR(MAX) COLLATE Latin1_General_100_BIN2 NOT NULL,
    change_seq      BIGINT NOT NULL,
    created         DATETIME2(3) NOT NULL,
    last_modified   DATETIME2(3) NOT NULL,
    CONSTRAINT groups_pk PRIMARY KEY CLUSTERED (pk),
    CONSTRAINT groups_doc_is_json CHECK (ISJSON(doc) = 1),
    CONSTRAINT groups_doc_ci_is_json CHECK (ISJSON(doc_ci) = 1)
);
CREATE UNIQUE INDEX groups_id ON scim.groups (tenant, id);
CREATE UNIQUE INDEX groups_display_name ON scim.groups (tenant, display_name_ci);
CREATE INDEX groups_external_id ON scim.groups (tenant, external_id);
CREATE INDEX groups_change_seq ON scim.groups (tenant, change_seq);
CREATE INDEX groups_tenant ON scim.groups (tenant);
GO

-- One row per membership: adding or removing a member never rewrites the group. Clustered on
-- the key, so a group's members are contiguous and a member add/remove is one seek.
CREATE TABLE scim.group_members (
    tenant      NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    group_id    NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    member_id   NVARCHAR(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    member_type NVARCHAR(8)   COLLATE Latin1_General_100_BIN2 NOT NULL,
    CONSTRAINT group_members_pk PRIMARY KEY CLUSTERED (tenant, group_id, member_id),
    CONSTRAINT group_members_type CHECK (member_type IN (N'User', N'Group'))
);
CREATE INDEX group_members_member ON scim.group_members (tenant, member_id) INCLUDE (member_type);
