"""The inspection console: one browser page at `/ui` over the service's own APIs.

Static files (HTML, CSS, a little JavaScript, no build step, no CDN) plus the few routes the
public and admin APIs do not cover: bundle reports, recent jobs and the review queue.
"""
