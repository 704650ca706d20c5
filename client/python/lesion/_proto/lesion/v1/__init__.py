"""Generated at build time from proto/lesion/v1/*.proto (see client/python/setup.py); not in git."""
