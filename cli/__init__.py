"""The `piston` command line: thin edges over the training, registry, service and job code."""
