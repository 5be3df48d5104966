-- Temporal's and the warehouse's users and databases, each user owning its own. Run with psql by
-- the db-init job of docker-compose.yml on every `up`, as the superuser. Every statement is safe
-- to repeat, and none changes what exists: a password rotated since (ALTER ROLE ... PASSWORD,
-- then the secret file) is never reset here.

-- The passwords, read from compose's secret files by psql itself: never on a command line, where
-- `ps` would show them.
-- Line breaks dropped, as every other reader of these files does.
\set temporal_password `tr -d '\r\n' < /run/secrets/temporal_db_password`
\set warehouse_password `tr -d '\r\n' < /run/secrets/warehouse_db_password`

SELECT format('CREATE ROLE temporal LOGIN PASSWORD %L', :'temporal_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'temporal') \gexec

SELECT format('CREATE ROLE warehouse LOGIN PASSWORD %L', :'warehouse_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'warehouse') \gexec

-- CREATE DATABASE cannot run in a DO block; \gexec runs it only when the database is missing.
SELECT 'CREATE DATABASE temporal OWNER temporal'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'temporal') \gexec
SELECT 'CREATE DATABASE temporal_visibility OWNER temporal'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'temporal_visibility') \gexec
SELECT 'CREATE DATABASE warehouse OWNER warehouse'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'warehouse') \gexec

-- Only each database's owner (and the superuser) connects to it.
REVOKE ALL ON DATABASE temporal FROM PUBLIC;
REVOKE ALL ON DATABASE temporal_visibility FROM PUBLIC;
REVOKE ALL ON DATABASE warehouse FROM PUBLIC;

-- Temporal's visibility schema indexes with btree_gin: made here, as the superuser.
\connect temporal_visibility
CREATE EXTENSION IF NOT EXISTS btree_gin;
