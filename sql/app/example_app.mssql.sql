-- Example application schema targeted by mappings/primedocs.toml and mappings/scifeon.toml,
-- for SQL Server (the SQLite version is sql/app/example_app.sql). Each users table has a unique
-- key column the sync engine upserts by; user_roles holds one row per (user, role) for the
-- mappings that assign roles. Idempotent: a table that exists is left as it is.

-- primedocs-style profile: one row per user, keyed by the Entra object id (externalId).
IF OBJECT_ID(N'dbo.primedocs_users', N'U') IS NULL
CREATE TABLE dbo.primedocs_users (
    external_id       NVARCHAR(64)  NOT NULL CONSTRAINT primedocs_users_pk PRIMARY KEY,
    user_name         NVARCHAR(256) NOT NULL,
    display_name      NVARCHAR(256) NOT NULL,
    first_name        NVARCHAR(128) NULL,
    last_name         NVARCHAR(128) NULL,
    initials          NVARCHAR(16)  NOT NULL CONSTRAINT primedocs_users_initials_default DEFAULT N'',
    email             NVARCHAR(320) NULL,
    job_function      NVARCHAR(256) NULL,
    organization_unit NVARCHAR(256) NULL,
    office_location   NVARCHAR(256) NULL,
    language          NVARCHAR(8)   NOT NULL CONSTRAINT primedocs_users_language_default DEFAULT N'de',
    phone             NVARCHAR(64)  NULL,
    is_active         BIT           NOT NULL CONSTRAINT primedocs_users_is_active_default DEFAULT 1
);
GO

-- Scifeon-style users: keyed by the login name.
IF OBJECT_ID(N'dbo.scifeon_users', N'U') IS NULL
CREATE TABLE dbo.scifeon_users (
    Id             INT IDENTITY (1, 1) NOT NULL CONSTRAINT scifeon_users_pk PRIMARY KEY,
    UserName       NVARCHAR(256) NOT NULL CONSTRAINT scifeon_users_user_name UNIQUE,
    FirstName      NVARCHAR(128) NOT NULL CONSTRAINT scifeon_users_first_name_default DEFAULT N'',
    LastName       NVARCHAR(128) NOT NULL CONSTRAINT scifeon_users_last_name_default DEFAULT N'',
    Initials       NVARCHAR(16)  NOT NULL CONSTRAINT scifeon_users_initials_default DEFAULT N'',
    Email          NVARCHAR(320) NULL,
    Phone          NVARCHAR(64)  NULL,
    JobTitle       NVARCHAR(256) NULL,
    Department     NVARCHAR(256) NOT NULL CONSTRAINT scifeon_users_department_default DEFAULT N'Unassigned',
    EmployeeNumber INT           NULL,
    HireDate       DATE          NULL,   -- the mapping renders ISO 8601 dates (YYYY-MM-DD)
    IsActive       BIT           NOT NULL CONSTRAINT scifeon_users_is_active_default DEFAULT 1
);
GO

-- Roles, by the users table's key (for scifeon_users: UserName).
IF OBJECT_ID(N'dbo.user_roles', N'U') IS NULL
CREATE TABLE dbo.user_roles (
    user_key NVARCHAR(256) NOT NULL,
    role     NVARCHAR(128) NOT NULL,
    CONSTRAINT user_roles_pk PRIMARY KEY CLUSTERED (user_key, role)
);
