-- What the admin API answers in one call: which user a SCIM request was about, and what is
-- failing now.

-- Whom a POST or PUT was about, as its body said, failures included (a refused create has no
-- resource id): the userName lower-cased (users only), and the externalId.
ALTER TABLE provisioning_log ADD COLUMN user_name TEXT;
ALTER TABLE provisioning_log ADD COLUMN external_id TEXT;
-- A user's requests, by resource id, userName or externalId; a request by its id.
CREATE INDEX provisioning_log_resource ON provisioning_log (tenant, resource_id) WHERE resource_id IS NOT NULL;
CREATE INDEX provisioning_log_user_name ON provisioning_log (tenant, user_name) WHERE user_name IS NOT NULL;
CREATE INDEX provisioning_log_external_id ON provisioning_log (tenant, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX provisioning_log_request ON provisioning_log (request_id);

-- What is failing now, longest failing first.
CREATE INDEX sync_retry_since ON sync_retry (tenant, first_failed_at);

-- A userName's users, deleted ones included (their lifecycle and their requests): the unique
-- index covers live users only.
CREATE INDEX users_user_name_all ON users (tenant, user_name_ci);
