"""The BentoML prediction service: HTTP in front of the registry's production bundle."""
