"""The OCI layout as one tar file, by format: ``oci`` (oci-archive) and ``docker`` (docker-archive), each
written and read in its module, over the tar mechanics both share (``tar``)."""
