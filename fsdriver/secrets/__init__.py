"""Secrets: encrypted stores, masking and running commands with secrets.

- `store`: names, scopes and the store protocol; `open_store()` picks the configured store.
- `local`: AES-GCM encrypted files (the embedded default).
- `ssm`: AWS Systems Manager Parameter Store SecureStrings.
- `mask`: replaces secret values in a command's output.
- `runner`: runs a command with secrets in its environment.
"""
