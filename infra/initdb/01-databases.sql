-- One Postgres, two databases: Prefect's and MLflow's schemas and migrations stay apart.
-- The official image runs this once, when the data volume is empty; both belong to POSTGRES_USER.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
