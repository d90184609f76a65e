-- What the admin API answers in one call: which user a SCIM request was about, and what is
-- failing now. Mirrors sql/sqlite/0007_admin_answers.sql. One column per ALTER TABLE; the
-- indexes on the new columns in a batch of their own (a batch is compiled before it runs).

-- Whom a POST or PUT was about, as its body said, failures included (a refused create has no
-- resource id): the userName lower-cased (users only), and the externalId.
ALTER TABLE scim.provisioning_log ADD user_name NVARCHAR(256) NULL;
ALTER TABLE scim.provisioning_log ADD external_id NVARCHAR(256) NULL;
GO
-- A user's requests, by resource id, userName or externalId; a request by its id.
CREATE INDEX provisioning_log_resource ON scim.provisioning_log (tenant, resource_id);
CREATE INDEX provisioning_log_user_name ON scim.provisioning_log (tenant, user_name);
CREATE INDEX provisioning_log_external_id ON scim.provisioning_log (tenant, external_id);
CREATE INDEX provisioning_log_request ON scim.provisioning_log (request_id);

-- What is failing now, longest failing first.
CREATE INDEX retry_since ON sync.retry (tenant, first_failed_at);

-- A userName's users, deleted ones included (their lifecycle and their requests): the unique
-- index covers live users only.
CREATE INDEX users_user_name_all ON scim.users (tenant, user_name_ci);
