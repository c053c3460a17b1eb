-- Run once by the postgres image's entrypoint when the data directory is created.
CREATE EXTENSION IF NOT EXISTS fetch_etl;
CREATE EXTENSION IF NOT EXISTS pg_cron;
