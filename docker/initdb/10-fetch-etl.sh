#!/bin/sh
# Run once by the postgres image's entrypoint when the data directory is
# created: fetch_etl in POSTGRES_DB; pg_cron in the database the server names
# in cron.database_name (pg_cron can only be created there, whatever
# POSTGRES_DB is), with a job draining FETCH_ETL_QUEUE_URL every minute and
# one pruning daily, both run in POSTGRES_DB (cron.schedule_in_database).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE EXTENSION IF NOT EXISTS fetch_etl;
SQL
cron_db=$(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -tA \
               -c "SELECT pg_catalog.current_setting('cron.database_name', true)")
if [ -z "$cron_db" ]; then
    echo "$0: pg_cron is not preloaded (shared_preload_libraries): no jobs scheduled" >&2
    exit 0
fi
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$cron_db" \
     -v queue_url="${FETCH_ETL_QUEUE_URL:-}" -v db="$POSTGRES_DB" <<'SQL'
CREATE EXTENSION IF NOT EXISTS pg_cron;
SELECT cron.schedule_in_database('fetch-etl-drain', '* * * * *',
                                 format('CALL fetch_etl.sqs_drain_for(%L, interval ''55 seconds'')', :'queue_url'),
                                 :'db')
WHERE :'queue_url' <> '';
SELECT cron.schedule_in_database('fetch-etl-prune', '17 3 * * *', 'SELECT * FROM fetch_etl.prune()', :'db');
SQL
