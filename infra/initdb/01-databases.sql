-- One Postgres, three databases: Prefect's, MLflow's tracking store and MLflow's auth store keep
-- their schemas and migrations apart. The official image runs this once, when the data volume
-- is empty; all three belong to POSTGRES_USER. A volume made before mlflow_auth was added here
-- needs it created by hand (infra/README.md, "Authentication").
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
-- Users and permissions of MLflow's basic-auth app (infra/mlflow/basic_auth.ini).
CREATE DATABASE mlflow_auth;
