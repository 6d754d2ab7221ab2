"""label-pipeline: few-label text classification as a cached Prefect workflow."""

__version__ = "0.1.0"
