"""Celery workers: batch scoring and retraining jobs. Only worker processes import this package."""
