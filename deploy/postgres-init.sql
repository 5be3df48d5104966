-- The simulated warehouse's user and database, apart from Temporal's. Run with psql by the
-- warehouse-db job of docker-compose.yml on every `up`, as Temporal's superuser: each statement
-- is safe to repeat. The worker's WAREHOUSE_URL names this user, password and database.

SELECT 'CREATE ROLE warehouse'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'warehouse') \gexec

-- On every run, so that the password written here is the one that holds.
ALTER ROLE warehouse WITH LOGIN PASSWORD 'warehouse';

-- CREATE DATABASE cannot run in a DO block; \gexec runs it only when the database is missing.
SELECT 'CREATE DATABASE warehouse OWNER warehouse'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'warehouse') \gexec

-- Only its owner (and the superuser) connects to it.
REVOKE ALL ON DATABASE warehouse FROM PUBLIC;
