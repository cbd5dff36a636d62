"""MS-CMRSeg 2019 LGE MRI + CycleMix scribbles -> $nnUNet_raw/Dataset029_MSCMRScribble.

Input: the CycleMix layout (``train/`` scribbles only -> imagesTr/labelsTr; ``val/`` and ``TestSet/`` dense
ground truth -> imagesTs/labelsTs). Label headers that differ from their image only in origin/direction
(``TestSet/labels/subject43_DE_manual.nii.gz`` upstream) are repaired with a warning naming the file::

    python dataset_conversion/Dataset029_MSCMRScribble.py -i MSCMR

Same as ``nnunet-scribble convert mscmr -d 29 ...``; every option of that command works here
(``-h`` lists them). See docs/conversion.md.
"""
import sys

from nnunet_scribble.conversion.command import run_script

if __name__ == "__main__":
    sys.exit(run_script("mscmr", 29))
