"""Training: from a folder (or S3 prefix) of labelled images to a versioned, evaluated bundle."""
