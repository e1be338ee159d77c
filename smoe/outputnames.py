"""The names of the files one fit writes into its output folder.

Kept apart from :mod:`smoe.outputs`, which builds those files, so that the
command line can list them in ``smoe fit --help`` and check an output folder
before loading torch.
"""

__all__ = ["FIT_OUTPUTS", "VIDEO_FIT_OUTPUTS"]

#: What one fit writes into its output folder, the model file first.
FIT_OUTPUTS = ("model.smoe.npz", "reconstruction.png", "metrics.json", "history.csv", "convergence.png",
               "kernels.png")

#: What one video fit (``smoe fit-video``) writes besides the reconstructed frames
#: ``frame_00000.png``, ... (see :func:`smoe.video.io.frame_names`), the model file first.
VIDEO_FIT_OUTPUTS = ("model.smoe.npz", "reconstruction.mp4", "metrics.json", "history.csv", "psnr_per_frame.png",
                     "kernels_xt.png")
