"""transferops: keep transfer-learned image models fresh in production.

The package is the pure core (models, data, drift, strategy, training, promotion,
reports, CLI). It never imports prefect, mlflow, dvc or great_expectations at
module level; the adapters to those live in the top-level ``tasks`` package.
"""

__version__ = "0.1.0"
