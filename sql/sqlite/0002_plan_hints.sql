-- Live rows per tenant in insertion order: plain lists and counts page through this index
-- (rowid order comes with it) instead of sorting.
CREATE INDEX users_live ON users (tenant) WHERE deleted_at IS NULL;
CREATE INDEX groups_tenant ON groups (tenant);

-- Planner statistics. Without them SQLite assumes `tenant = ?` is selective and may scan a
-- tenant's users to answer `emails[…] eq` instead of going through the email index. These
-- figures only describe the shape of the data (many rows per tenant, one row per id, name or
-- email); ANALYZE replaces them with measured ones.
ANALYZE sqlite_schema;
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
    ('users', 'users_live', '100000 50000'),
    ('users', 'users_id', '100000 50000 1'),
    ('users', 'users_user_name', '100000 50000 1'),
    ('users', 'users_external_id', '100000 50000 1'),
    ('users', 'users_change_seq', '100000 50000 1'),
    ('user_emails', 'user_emails_value', '100000 50000 1'),
    ('user_emails', 'user_emails_user', '100000 1'),
    ('groups', 'groups_tenant', '10000 5000'),
    ('groups', 'groups_id', '10000 5000 1'),
    ('groups', 'groups_display_name', '10000 5000 1'),
    ('groups', 'groups_external_id', '10000 5000 1'),
    ('groups', 'groups_change_seq', '10000 5000 1'),
    ('group_members', 'group_members', '1000000 500000 1000 1'),
    ('group_members', 'group_members_member', '1000000 500000 3');
