"""WSL4MIS h5 volumes (ACDC, keys image/label/scribble) -> $nnUNet_raw/Dataset028_WSL4MISScribble.

The h5 files store no voxel spacing: pass ``--spacing Z Y X`` (mm), or get ACDC's typical 10 1.5 1.5
with a warning::

    python dataset_conversion/Dataset028_WSL4MISScribble.py -i data/ACDC/ACDC_training_volumes --test-patients 71-85

Same as ``nnunet-scribble convert wsl4mis -d 28 ...``; every option of that command works here
(``-h`` lists them). See docs/conversion.md.
"""
import sys

from nnunet_scribble.conversion.command import run_script

if __name__ == "__main__":
    sys.exit(run_script("wsl4mis", 28))
