"""The release dashboard: the grid, what waits for a person, one page per release and per environment."""
