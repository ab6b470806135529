"""Tasks: what is learned from what. Each gives the engine its `step` and owns its data and metrics."""
