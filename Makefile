# Two entry points (see README): `make demo` and `make test`. Both create the
# virtual environment on first use and reuse it afterwards (idempotent).
VENV   ?= .venv
PYTHON ?= python3.11
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.transferops-installed

# Telemetry of every tool off; the code sets the same defaults for other entry points.
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
# A new Prefect database takes ~30 s to migrate on 2 cores; the default timeout is shorter.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/transferops demo --workdir demo-workdir

test: setup
	$(PY) -m pytest

clean:
	rm -rf demo-workdir .pytest_cache
