"""The training engine: knows neither data nor models, only a task's `step(model, batch)`."""
