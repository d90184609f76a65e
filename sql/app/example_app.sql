-- Example application schema targeted by mappings/primedocs.toml and mappings/scifeon.toml.
-- SQLite. Each users table has a unique key column the sync engine upserts by; user_roles holds
-- one row per (user, role) for the mappings that assign roles.

-- primedocs-style profile: one row per user, keyed by the Entra object id (externalId).
CREATE TABLE IF NOT EXISTS primedocs_users (
    external_id       TEXT PRIMARY KEY NOT NULL,
    user_name         TEXT NOT NULL,
    display_name      TEXT NOT NULL,
    first_name        TEXT,
    last_name         TEXT,
    initials          TEXT NOT NULL DEFAULT '',
    email             TEXT,
    job_function      TEXT,
    organization_unit TEXT,
    office_location   TEXT,
    language          TEXT NOT NULL DEFAULT 'de',
    phone             TEXT,
    is_active         INTEGER NOT NULL DEFAULT 1
);

-- Scifeon-style users: keyed by the login name.
CREATE TABLE IF NOT EXISTS scifeon_users (
    Id             INTEGER PRIMARY KEY AUTOINCREMENT,
    UserName       TEXT NOT NULL UNIQUE,
    FirstName      TEXT NOT NULL DEFAULT '',
    LastName       TEXT NOT NULL DEFAULT '',
    Initials       TEXT NOT NULL DEFAULT '',
    Email          TEXT,
    Phone          TEXT,
    JobTitle       TEXT,
    Department     TEXT NOT NULL DEFAULT 'Unassigned',
    EmployeeNumber INTEGER,
    HireDate       TEXT,
    IsActive       INTEGER NOT NULL DEFAULT 1
);

-- Roles, by the users table's key (for scifeon_users: UserName).
CREATE TABLE IF NOT EXISTS user_roles (
    user_key TEXT NOT NULL,
    role     TEXT NOT NULL,
    PRIMARY KEY (user_key, role)
);
