"""Network building blocks on top of nnU-Net's planned architectures, one module per concern
(e.g. :mod:`nnunet_scribble.networks.dual_decoder`: one planned encoder with two decoders, used by
DMPLS and SAM-SP).

Modules are imported by their users, not here, so one method's network never costs another's imports.
"""
