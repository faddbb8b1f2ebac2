"""The data layer: task definitions and loading, the split protocol, synthetic tasks, image inputs."""
