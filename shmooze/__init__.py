"""shmooze: process-backed web applications.

This package's top level stays import-free on purpose: module processes import
``shmooze.modules`` and must not pay for the framework's web stack.
"""

__version__ = "0.1.0"
