#!/bin/sh
# Run once by the postgres image's entrypoint when the data directory is created:
# the extensions, and a pg_cron job draining FETCH_ETL_QUEUE_URL every minute.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v queue_url="${FETCH_ETL_QUEUE_URL:-}" <<'SQL'
CREATE EXTENSION IF NOT EXISTS fetch_etl;
CREATE EXTENSION IF NOT EXISTS pg_cron;
SELECT cron.schedule('fetch-etl-drain', '* * * * *',
                     format('CALL fetch_etl.sqs_drain_for(%L, interval ''55 seconds'')', :'queue_url'))
WHERE :'queue_url' <> '';
SELECT cron.schedule('fetch-etl-prune', '17 3 * * *', 'SELECT * FROM fetch_etl.prune()');
SQL
