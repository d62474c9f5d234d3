"""OCI image layouts: ``write`` (atomic, concurrent), ``read`` (every document checked), ``gc``."""
