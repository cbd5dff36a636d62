"""Model selection and shipping: nnU-Net's find-best-configuration scored against dense labels (or a
scribble-only proxy), and model zips that stock nnU-Net predicts with."""
