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
SERVER_TARGETS := pools deploy worker worker-gpu run-deployment
$(SERVER_TARGETS): export PREFECT_API_URL ?= http://$(PREFECT_HOST):$(PREFECT_PORT)/api
$(SERVER_TARGETS): export PREFECT_CLI_PROMPT ?= false
$(SERVER_TARGETS): export LABEL_PIPELINE_DIR ?= $(CURDIR)

.PHONY: server pools deploy worker worker-gpu run-deployment run-dask dask-scheduler \
	dask-worker deploy-help

deploy-help:
	@echo "make server          - Prefect API + UI on http://$(PREFECT_HOST):$(PREFECT_PORT) (foreground)"
	@echo "make pools           - create the process work pools $(CPU_POOL) and $(GPU_POOL)"
	@echo "make deploy          - deploy every deployment in prefect.yaml (no prompts)"
	@echo "make worker          - process worker on $(CPU_POOL) (foreground)"
	@echo "make worker-gpu      - process worker on $(GPU_POOL), for a machine with a GPU"
	@echo "make run-deployment  - run $(DEPLOYMENT) and watch it until it finishes"
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
	$(PREFECT) deploy --all --no-prompt

worker: $(RES)
	$(PREFECT) worker start --pool $(CPU_POOL) --type process

worker-gpu: $(RES)
	$(PREFECT) worker start --pool $(GPU_POOL) --type process --work-queue gpu

run-deployment: $(STAMP)
	$(PREFECT) deployment run $(DEPLOYMENT) --watch

run-dask: $(RES)
	$(PY) -m flows.label_pipeline --runner dask --n-workers $(DASK_WORKERS)

dask-scheduler: $(STAMP)
	$(VENV)/bin/dask scheduler --host 0.0.0.0 --port 8786

dask-worker: $(STAMP)
	@test -n "$(DASK_SCHEDULER)" || { echo "set DASK_SCHEDULER=tcp://host:8786"; exit 1; }
	$(VENV)/bin/dask worker $(DASK_SCHEDULER) --nthreads 1
