"""Files the project reads and writes: atomic write-then-rename, SHA-256 manifests, content hashes for
cache keys, the alias-free YAML loader, and the checks on output targets."""
