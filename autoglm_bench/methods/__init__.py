"""The methods, each ``run(run_cfg, run_dir) -> record`` and registered by name in :data:`REGISTRY`."""
