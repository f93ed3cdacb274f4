-- Runs once, when the postgres container initialises an empty data volume
-- (/docker-entrypoint-initdb.d). POSTGRES_DB already created the warehouse database;
-- this adds the database that holds Dagster's run, event-log and schedule storage.
CREATE DATABASE dagster;
