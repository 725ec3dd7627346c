"""What every room of medgen uses, once: infrastructure with no knowledge of images or cohorts.

- :mod:`~medgen._internal.files`: atomic file and folder writes, table writing.
- :mod:`~medgen._internal.provenance`: package versions and content hashes recorded beside
  every output.
- :mod:`~medgen._internal.suggest`: "Did you mean ...?" hints for error messages.
- :mod:`~medgen._internal.lazy`: lazy public names for package ``__init__`` modules and optional
  imports with an install hint.
- :mod:`~medgen._internal.device`: ``"auto"`` / ``"cpu"`` / ``"cuda[:n]"`` to a torch device.
- :mod:`~medgen._internal.types`: type aliases shared by the public signatures.

Nothing here imports torch, MONAI or pandas at import time.
"""
