-- Readiness's write probe: one row that /readyz updates, so "can take writes" is a write the
-- server must log and commit, not only an answer to a query (SQL Server only; SQLite probes
-- its file and folder instead).
CREATE TABLE scim.health (
    id        INT          NOT NULL CONSTRAINT health_pk PRIMARY KEY CONSTRAINT health_one_row CHECK (id = 1),
    probed_at DATETIME2(3) NOT NULL
);
INSERT INTO scim.health (id, probed_at) VALUES (1, SYSUTCDATETIME());
