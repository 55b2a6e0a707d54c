"""stashfs core library and FUSE daemon.

Pipeline data, user data and key/value records stored as ordinary objects on local disk or S3,
served as plain files through a FUSE mount and through a small Python API (`fsdriver.data`).
"""

__version__ = "0.1.0"
