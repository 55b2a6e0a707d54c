"""Secrets: encrypted stores, masking and running commands with secrets.

- `store`: names, scopes and the store protocol; `open_store()` picks the configured store.
- `local`: AES-GCM encrypted files (the embedded default).
- `ssm`: AWS Systems Manager Parameter Store SecureStrings.
- `forms`: the forms of a value that are masked, and which values are too short to mask.
- `mask`: replaces secret values in a command's output.
- `runner`: runs a command with secrets in its environment.
- `secret_files`: secrets as files on a tmpfs, for one command's lifetime.
- `accesslog`: the per-user record of which secrets `mountctl exec` gave to which command.
"""
