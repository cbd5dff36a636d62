"""ACDC cine-MRI + Valvano et al. scribbles -> $nnUNet_raw/Dataset027_ACDCScribble.

Input: the official ACDC folder (``training/patientXXX/patientXXX_frameYY.nii.gz`` + ``_gt``; an official
``testing/`` folder goes to imagesTs) and the folder of ``patientXXX_frameYY_scribble.nii.gz`` files.
Benchmark split used in this project (train 001-070, test 071-085)::

    python dataset_conversion/Dataset027_ACDCScribble.py -i ACDC -s ACDC/scribbles --test-patients 71-85

Same as ``nnunet-scribble convert acdc -d 27 ...``; every option of that command works here
(``-h`` lists them). See docs/conversion.md.
"""
import sys

from nnunet_scribble.conversion.command import run_script

if __name__ == "__main__":
    sys.exit(run_script("acdc", 27))
