"""Converters from published scribble formats to nnU-Net raw datasets, and scribble simulation.

Images are read and written by ``nnunet_scribble.volume``. One module per concern: ``labels`` (value maps and
presets), ``splits`` (patient-grouped folds), ``dataset`` (validated, atomic writing of a raw dataset),
``output`` (where an output may go, what ``--overwrite`` may replace, the write-beside-then-swap), one module
per source format (``acdc``, ``wsl4mis``, ``mscmr``, ``folder``), ``simulate`` and ``shrink`` (scribbles from
dense labels, MaCo's shrink protocol), ``mixed`` (dense / scribbled / unlabeled case selection and summary),
``derive`` (new datasets from existing ones) and ``command`` (the
``nnunet-scribble convert|simulate-scribbles|shrink-scribbles|derive-mixed`` subcommands).
"""
