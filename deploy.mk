# Deployment targets (included by the Makefile): a local Prefect server and UI, the work
# pools, the deployments of prefect.yaml, a worker, and a triggered run. See docs/deploy.md.

PREFECT        := $(VENV)/bin/prefect
PREFECT_HOST   ?= 127.0.0.1
PREFECT_PORT   ?= 4200
CPU_POOL       ?= label-pipeline-cpu
GPU_POOL       ?= label-pipeline-gpu
DASK_WORKERS   ?= 2
DEPLOYMENT     ?= label-pipeline/default

# The Prefect commands below talk to the local server unless PREFECT_API_URL is set.
# Only these targets get it: `make run` and `make test` keep their throw-away API.
SERVER_TARGETS := pools deploy worker worker-gpu run-deployment store-variable
$(SERVER_TARGETS): export PREFECT_API_URL ?= http://$(PREFECT_HOST):$(PREFECT_PORT)/api
$(SERVER_TARGETS): export PREFECT_CLI_PROMPT ?= false
# A worker runs the flow from its own checkout: the deployments' pull step reads
# LABEL_PIPELINE_DIR on the worker when a run starts (`make deploy` leaves it unset, so
# prefect.yaml keeps the placeholder instead of the deploying machine's path).
worker worker-gpu: export LABEL_PIPELINE_DIR ?= $(CURDIR)

# `make run-deployment PARAMS='{"config": {"ingest": {"sample_rows": 5}}}'`: the fields
# given are merged onto the deployment's config, every other setting is kept
PARAMS ?=

.PHONY: server pools deploy worker worker-gpu run-deployment run-dask dask-scheduler \
	dask-worker deploy-help store-variable

deploy-help:
	@echo "make server          - Prefect API + UI on http://$(PREFECT_HOST):$(PREFECT_PORT) (foreground)"
	@echo "make pools           - create the process work pools $(CPU_POOL) and $(GPU_POOL)"
	@echo "make deploy          - deploy every deployment in prefect.yaml (no prompts)"
	@echo "make worker          - process worker on $(CPU_POOL) (foreground)"
	@echo "make worker-gpu      - process worker on $(GPU_POOL), for a machine with a GPU"
	@echo "make run-deployment  - run $(DEPLOYMENT) and watch it (PARAMS='{\"config\": {...}}' changes fields)"
	@echo "make store-variable STORE=path-or-url - the stage store every worker uses (Prefect Variable)"
	@echo "make run-dask        - run the flow here on a local Dask cluster ($(DASK_WORKERS) workers)"
	@echo "make dask-scheduler / dask-worker - a Dask cluster across machines"

server: $(STAMP)
	$(PREFECT) server start --host $(PREFECT_HOST) --port $(PREFECT_PORT)

pools: $(STAMP)
	$(PREFECT) work-pool inspect $(CPU_POOL) >/dev/null 2>&1 || \
		$(PREFECT) work-pool create $(CPU_POOL) --type process
	$(PREFECT) work-pool inspect $(GPU_POOL) >/dev/null 2>&1 || \
		$(PREFECT) work-pool create $(GPU_POOL) --type process

deploy: pools
	env -u LABEL_PIPELINE_DIR $(PREFECT) deploy --all --no-prompt

# a process worker that stops within seconds on Ctrl-C (label_pipeline/worker.py)
worker: $(RES)
	$(PY) -m label_pipeline.worker --pool $(CPU_POOL)

worker-gpu: $(RES)
	$(PY) -m label_pipeline.worker --pool $(GPU_POOL) --work-queue gpu

run-deployment: $(STAMP)
	$(PREFECT) deployment run $(DEPLOYMENT) $(if $(PARAMS),--params '$(PARAMS)') --watch

# the stage store of every worker: a shared path or an fsspec URL (s3://bucket/store)
store-variable: $(STAMP)
	@test -n "$(STORE)" || { echo "set STORE=/shared/store or STORE=s3://bucket/store"; exit 1; }
	$(PREFECT) variable set label_pipeline_store '$(STORE)' --overwrite

run-dask: $(RES)
	$(PY) -m flows.label_pipeline --runner dask --n-workers $(DASK_WORKERS)

dask-scheduler: $(STAMP)
	$(VENV)/bin/dask scheduler --host 0.0.0.0 --port 8786

dask-worker: $(STAMP)
	@test -n "$(DASK_SCHEDULER)" || { echo "set DASK_SCHEDULER=tcp://host:8786"; exit 1; }
	$(VENV)/bin/dask worker $(DASK_SCHEDULER) --nthreads 1
