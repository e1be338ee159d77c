"""The names of the files one fit writes into its output folder.

Kept apart from :mod:`smoe.outputs`, which builds those files, so that the
command line can list them in ``smoe fit --help`` and check an output folder
before loading torch.
"""

__all__ = ["FIT_OUTPUTS"]

#: What one fit writes into its output folder, the model file first.
FIT_OUTPUTS = ("model.smoe.npz", "reconstruction.png", "metrics.json", "history.csv", "convergence.png",
               "kernels.png")
