"""Test-run hygiene shared by unit tests and notebooks (nbval kernels inherit this env).

Nothing is downloaded (HF offline) and Jupyter/IPython/matplotlib write into a
scratch folder, never into the user's home. ``make test`` sets the same.
"""

import os
import tempfile

_scratch = os.environ.get("MLMF_SCRATCH") or tempfile.mkdtemp(prefix="mlmf-test-")
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "JUPYTER_CONFIG_DIR": f"{_scratch}/jupyter/config",
    "JUPYTER_DATA_DIR": f"{_scratch}/jupyter/data",
    "JUPYTER_RUNTIME_DIR": f"{_scratch}/jupyter/runtime",
    "IPYTHONDIR": f"{_scratch}/ipython",
    "MPLCONFIGDIR": f"{_scratch}/mpl",
    "MPLBACKEND": "Agg",
    "TOKENIZERS_PARALLELISM": "false",
    "MLMF_KERNEL_DIR": f"{_scratch}/kernels",  # compiled kernels too, not ~/.cache
    "PYTHONHASHSEED": "0",  # for the notebook kernels this process starts
    "TMPDIR": "/tmp",  # the notebooks' stored temporary paths, as sanitize.cfg expects
}.items():
    os.environ.setdefault(key, value)
