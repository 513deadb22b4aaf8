"""A compact re-implementation of the Dassl.pytorch API used by CoOp-style code.

Sub-packages are imported on demand; importing ``dassl`` itself loads nothing optional (B34).
"""

__version__ = "0.6.3+fsnl"
