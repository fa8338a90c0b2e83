"""`python -m keras_sit.evaluation DIR_A DIR_B --inception pt_inception-2015-12-05-6726825d.pth`: the FID of two
image folders or `.npz` files, as `python -m pytorch_fid`; see `keras_sit.evaluation.cli`."""

from keras_sit.evaluation.cli import main

if __name__ == "__main__":
    main()
