# Re-exports only (see __init__.py). Every trainer module lists its trainers in __all__.
from nnunet_scribble.training.pce import *  # noqa: F401,F403
from nnunet_scribble.training.attenscribble import *  # noqa: F401,F403
from nnunet_scribble.training.dmpls import *  # noqa: F401,F403
from nnunet_scribble.training.stock import *  # noqa: F401,F403
from nnunet_scribble.training.maco import *  # noqa: F401,F403
from nnunet_scribble.training.samsp import *  # noqa: F401,F403
from nnunet_scribble.training.medcl import *  # noqa: F401,F403
from nnunet_scribble.training.mean_teacher import *  # noqa: F401,F403
from nnunet_scribble.training.cfr import *  # noqa: F401,F403
