-- fetch_etl 0.2.0 -> 0.3.0 (ALTER EXTENSION fetch_etl UPDATE)
--
-- Credentials from the standard AWS chain (web identity, profiles, container,
-- IMDSv2, AssumeRole): each run records where its credentials came from and
-- whose they are. Runs from before have neither (NULL).

\echo Use "ALTER EXTENSION fetch_etl UPDATE TO '0.3.0'" to load this file. \quit

ALTER TABLE fetch_etl.drain_runs
    ADD COLUMN credential_source text,
    ADD COLUMN credential_identity text;
