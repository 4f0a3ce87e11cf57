# The two commands of the README:
#   make demo   set up everything, then run the main job end to end on the local stack
#   make test   set up everything, then run the tests (they start their own stack)
SHELL := /bin/bash
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: setup demo test bench docs stack-up stack-down clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/churn demo

test: setup
	$(VENV)/python -m pytest $(PYTEST_ARGS)

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
