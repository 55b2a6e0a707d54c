"""stashfs benchmark: ``make bench`` (``python -m bench [--quick] [--json FILE]``).

Measures the FUSE mount against raw boto3 on a local moto S3 server (through a counting proxy, so
both are counted the same way) and the disk-backend mount against the backing files.  See
docs/performance.md for what each row measures, the targets and measured figures.
"""
