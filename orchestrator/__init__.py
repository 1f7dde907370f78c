"""The release orchestrator's internal modules, behind the top-level entry points (run_worker.py, workflows.py, ...)."""
