"""The release workflow's parts, each a helper object the workflow owns: deterministic workflow code only."""
