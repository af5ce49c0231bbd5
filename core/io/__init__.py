"""Files the project writes: atomic write-then-rename, SHA-256 manifests, content hashes for cache keys."""
