"""What runs inside Ray: data, models, LoRA, the train loop, tracking. The only layer that imports torch/Ray."""
