"""The SDK: one facade over swappable backends (local, kube, rest)."""
