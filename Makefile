# The two commands of the README:
#   make demo   set up everything, then run the main job end to end on the local stack
#   make test   set up everything (Airflow's environment too), then run the tests (they start their own stack)
# make airflow: everything `make setup` installs, plus .venv-airflow (the nightly DAG's Airflow)
SHELL := /bin/bash
VENV := .venv/bin
PYTEST_ARGS ?=
# the suite runs in two pytest-xdist workers, each module whole on one of them (module fixtures start once)
PYTEST_WORKERS ?= 2

.PHONY: setup airflow demo test bench docs stack-up stack-down clean

setup:
	@bash scripts/setup.sh

airflow:
	@bash scripts/setup.sh --airflow

demo: setup
	$(VENV)/churn demo

test: airflow
	$(VENV)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: setup
	$(VENV)/python bench/run.py

docs: setup
	$(VENV)/churn schemas docs

stack-up: setup
	$(VENV)/churn stack up

stack-down:
	$(VENV)/churn stack down

clean: stack-down
	rm -rf .run
