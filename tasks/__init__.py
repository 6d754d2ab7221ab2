"""The stages of label-pipeline: each module is a plain function over the stage store
plus its pydantic config; ``flows/`` wires them with thin Prefect wrappers."""
