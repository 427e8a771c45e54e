"""What runs in a training worker: the recipe, data, models, checkpoints, the schedule and the strategy engines."""
