"""Shared core of piston-inspector: settings, storage, image decoding, model bundles, registry.

Training, the prediction service and the workers all build on this package; it imports
none of them.
"""
