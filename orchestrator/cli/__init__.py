"""The bodies of run_workflow.py's subcommands, and the follower that prints a release as it runs."""
