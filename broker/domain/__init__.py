"""The broker's domain core: plain Python, no web framework, no database, no AWS SDK."""
