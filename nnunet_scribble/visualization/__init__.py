"""Pictures of datasets and results (``nnunet-scribble overlay``)."""
